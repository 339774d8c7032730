"""``lipcert serve`` as a whole: it keeps the embedded Redis alive and never prints its password."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from service.runner import free_port, wait_http

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, nice value, command line) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry)] = (int(fields[1]), int(fields[16]), cmdline)
    return found


def _descendants(pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (nice value, command line) of every process below ``pid``."""
    table, out, todo = _processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, nice, cmdline) in table.items():
            if ppid == parent and child not in out:
                out[child] = (nice, cmdline)
                todo.append(child)
    return out


def test_serve_restarts_the_embedded_redis_when_it_dies(tmp_path):
    """Also: the workers run at the nice value given (below the API's), the API and Redis at the caller's."""
    port, data = free_port(), tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LIPCERT_TOKENS", "LIPCERT_TOKENS_FILE")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", LIPCERT_WORKER_HEARTBEAT_S="0.5")
    out = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "certify", "serve", "--port", str(port), "--data-dir", str(data),
                             "--workers", "1", "--device", "cpu", "--api-processes", "1", "--worker-nice", "7"],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        _wait(lambda: _ready(f"http://127.0.0.1:{port}/readyz"), 60, "a worker's heartbeat")
        own = os.getpriority(os.PRIO_PROCESS, 0)
        below = _descendants(proc.pid).values()
        workers = [nice for nice, cmdline in below if " celery " in cmdline]
        others = [nice for nice, cmdline in below if "gunicorn" in cmdline or "redis" in cmdline]
        assert len(workers) >= 2 and set(workers) == {max(own, 7)}, below  # the worker and its pool process
        assert len(others) >= 3 and set(others) == {own}, below
        pidfile = os.path.join(data, "redis", "redis.pid")
        first = _wait(lambda: _pid(pidfile), 10, "the Redis pid file")
        assert oct(os.stat(data).st_mode & 0o777) == "0o700"
        os.kill(first, signal.SIGKILL)  # Redis crashes (OOM killer, say)
        _wait(lambda: _pid(pidfile) not in (None, first), 30, "a new Redis")
        _wait(lambda: _ready(f"http://127.0.0.1:{port}/readyz"), 60, "the service to be ready again")
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.seek(0)
        log = out.read()
        out.close()
    assert "redis exited" in log and "restarting it" in log, log[-3000:]
    password = open(data / "redis" / "password").read().strip()
    assert password not in log and "Redis at redis://:***@127.0.0.1" in log
