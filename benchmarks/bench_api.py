"""Load on the API over loopback: N concurrent clients polling jobs and uploading for D seconds.

Starts its own service (embedded Redis, gunicorn, one worker) in a temporary directory, runs the load, then checks
that every job it created still exists and ends (no lost job) and that no request got a 5xx. Prints a table of
latencies (p50/p99) per request kind, overall and per 5 s window, as the clients see them, and the same from
gunicorn's own request times (its access log), which leave out the load generator's share of the two cores.
Goals on an idle machine after warm-up: p99 of GET /v1/jobs/{id} under 20 ms, of POST /v1/jobs under 100 ms.

Each client creates a job, then polls it, with a job list every 10th request, a dataset upload every 20th and
another job creation every 40th (so POST /v1/jobs is measured in the steady state too, not only at the start).
Clients arrive spread over ``--ramp`` seconds; ``--ramp 0`` sends all 50 job creations at the same instant, which
measures queueing behind 2 x 4 server threads rather than the cost of a request.

The worker runs at nice ``--worker-nice`` (default: the service's, 10; see worker/priority.py): on shared cores
the job it runs then yields to the API. ``--worker-nice 0`` measures the API beside a worker of equal priority.

    python benchmarks/bench_api.py [--clients 50] [--duration 30] [--interval 0.5] [--api-processes 2] [--threads 4]
                                   [--ramp 2] [--worker-nice N]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOKEN = "bench-token-0123456789abcdef"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _npz(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((8, 64), dtype=np.float32), y=rng.integers(0, 10, 8))
    return buf.getvalue()


class Load:
    def __init__(self, base: str, model_id: str, duration: float, interval: float, ramp: float):
        self.base, self.model_id, self.duration, self.interval, self.ramp = base, model_id, duration, interval, ramp
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter = Counter()
        self.jobs: list[str] = []
        self.samples: list[tuple[str, float, float]] = []  # (kind, time, ms) of every request
        self.started = time.monotonic()
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _timed(self, s: requests.Session, kind: str, method: str, path: str, **kw):
        t0 = time.perf_counter()
        try:
            r = s.request(method, self.base + path, timeout=30, **kw)
        except requests.RequestException as e:
            with self.lock:
                self.errors.append(f"{kind}: {e.__class__.__name__}")
            return None
        dt = (time.perf_counter() - t0) * 1000
        with self.lock:
            self.latencies[kind].append(dt)
            self.samples.append((kind, time.monotonic(), dt))
            self.statuses[(kind, r.status_code)] += 1
        return r

    def _create_job(self, s: requests.Session) -> str | None:
        r = self._timed(s, "POST /v1/jobs", "POST", "/v1/jobs",
                        json={"model": self.model_id, "samples": 2, "attacks": "none"})
        if r is None or r.status_code != 202:
            return None
        with self.lock:
            self.jobs.append(r.json()["id"])
        return r.json()["id"]

    def client(self, index: int) -> None:
        rng = random.Random(index)
        time.sleep(rng.uniform(0, self.ramp))
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        job_id = self._create_job(s)
        if job_id is None:
            return
        end = time.monotonic() + self.duration
        n = 0
        while time.monotonic() < end:
            n += 1
            if n % 40 == 0:
                self._create_job(s)
            elif n % 20 == 0:
                self._timed(s, "POST /v1/datasets", "POST", "/v1/datasets", data=_npz(rng.randrange(1 << 30)),
                            headers={"Content-Type": "application/octet-stream"})
            elif n % 10 == 0:
                self._timed(s, "GET /v1/jobs", "GET", "/v1/jobs", params={"limit": 10})
            else:
                self._timed(s, "GET /v1/jobs/{id}", "GET", f"/v1/jobs/{job_id}")
            time.sleep(self.interval * rng.uniform(0.5, 1.5))


KINDS = ("GET /v1/jobs/{id}", "GET /v1/jobs", "POST /v1/datasets", "POST /v1/jobs")


def print_latencies(load: Load, args, elapsed: float, load_before: tuple) -> None:
    total = sum(len(v) for v in load.latencies.values())
    print(f"\nbench_api: {args.clients} clients every ~{args.interval:g} s arriving over {args.ramp:g} s, "
          f"{args.duration:.0f} s, "
          f"{args.api_processes} gunicorn processes x {args.threads} threads, worker nice {args.worker_nice}, "
          f"{os.cpu_count()} CPUs, loopback, load average (1/5/15 min) before "
          + "/".join(f"{v:.1f}" for v in load_before) + ", after " + "/".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"{'request':<20} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in KINDS:
        v = load.latencies.get(kind) or [float("nan")]
        print(f"{kind:<20} {len(load.latencies.get(kind, [])):>7} {statistics.median(v):>8.1f} "
              f"{_percentile(v, 99):>8.1f} {max(v):>8.1f}")
    codes = Counter()
    for (_kind, code), n in load.statuses.items():
        codes[code] += n
    print(f"requests {total} ({total / elapsed:.0f}/s), status codes {dict(sorted(codes.items()))}", flush=True)
    print_windows(load)


def print_windows(load: Load, width: int = 5) -> None:
    """count, p50 and p99 (ms) per request kind in each ``width``-second window since the load started."""
    windows: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, t, ms in load.samples:
        windows[int(t - load.started) // width * width][kind].append(ms)
    print(f"\nper {width} s window: count p50/p99 ms")
    print(f"{'window':<8}" + "".join(f"{k:>26}" for k in KINDS))
    for start in sorted(windows):
        cells = []
        for kind in KINDS:
            v = windows[start].get(kind)
            cells.append(f"{len(v)} {statistics.median(v):.0f}/{_percentile(v, 99):.0f}" if v else "-")
        print(f"{start:>3}-{start + width:<4}" + "".join(f"{c:>26}" for c in cells), flush=True)


SERVER_TIME_FORMAT = "%(m)s %(U)s %(s)s %(D)s"  # method, path, status, microseconds inside gunicorn


def _kind(method: str, path: str) -> str | None:
    parts = path.rstrip("/").split("/")
    if parts[1:3] == ["v1", "jobs"]:
        if len(parts) == 3:
            return f"{method} /v1/jobs"
        if len(parts) == 4 and method == "GET":
            return "GET /v1/jobs/{id}"
    if parts[1:3] == ["v1", "datasets"] and len(parts) == 3 and method == "POST":
        return "POST /v1/datasets"
    return None


def print_server_times(access_log: str) -> None:
    """The same percentiles from the time gunicorn spent on each request (its access log), from reading the request
    to sending the response: what the service itself costs, apart from the load generator, which shares the cores
    (and its own interpreter lock across 50 client threads) with the service."""
    times: dict[str, list[float]] = defaultdict(list)
    with open(access_log) as f:
        for line in f:
            fields = line.split()
            kind = _kind(fields[0], fields[1]) if len(fields) == 4 else None
            if kind in KINDS:
                times[kind].append(int(fields[3]) / 1000)
    print(f"\ninside the server (gunicorn's request time)\n{'request':<20} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}")
    for kind in KINDS:
        v = times.get(kind) or [float("nan")]
        print(f"{kind:<20} {len(times.get(kind, [])):>7} {statistics.median(v):>8.1f} {_percentile(v, 99):>8.1f} "
              f"{max(v):>8.1f}", flush=True)


def check_jobs(s: requests.Session, base: str, jobs: list[str], timeout: float = 180.0):
    """No lost job: every job still exists; those not finished are cancelled and must then end."""
    before = Counter(s.get(f"{base}/v1/jobs/{j}", timeout=30).json().get("state", "lost") for j in jobs)
    print(f"jobs at the end of the load: {dict(before)}")
    for job_id in jobs:
        s.delete(f"{base}/v1/jobs/{job_id}", timeout=30)  # 409 for the ones that already ended
    lost, states = [], Counter()
    deadline = time.monotonic() + timeout
    for job_id in jobs:
        while True:
            r = s.get(f"{base}/v1/jobs/{job_id}", timeout=30)
            if r.status_code != 200:
                lost.append(job_id)
                break
            state = r.json()["state"]
            if state in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                states[state] += 1
                break
            time.sleep(0.2)
    return lost, states


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--api-processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.5,
                    help="seconds between a client's requests (0.5 s is the poll interval of lipcert status --wait;"
                         " 0 saturates the server)")
    ap.add_argument("--worker-nice", type=int, default=None,
                    help="nice value of the worker (default: the service's default, LIPCERT_WORKER_NICE or 10)")
    ap.add_argument("--ramp", type=float, default=2.0,
                    help="seconds over which the clients arrive (0: every client's first request at once)")
    args = ap.parse_args()

    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key
    from service.runner import Child, EmbeddedRedis, api_argv, free_port, wait_http, worker_argv

    with tempfile.TemporaryDirectory(prefix="lipcert-bench-") as data_dir:
        print(f"data and logs in {data_dir}", flush=True)
        redis_child = EmbeddedRedis(os.path.join(data_dir, "redis")).start()
        port = free_port()
        env = dict(os.environ, REDIS_URL=redis_child.url, LIPCERT_DATA_DIR=data_dir,
                   LIPCERT_TOKENS=f"bench:{TOKEN}", LIPCERT_RATE_LIMIT="1000000", LIPCERT_JOB_QUOTA="100000",
                   PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
        if args.worker_nice is not None:
            env["LIPCERT_WORKER_NICE"] = str(args.worker_nice)
        args.worker_nice = Settings.from_env(env).worker_nice
        ensure_signing_key(Settings.from_env(env))
        children = [redis_child]
        try:
            access_log = os.path.join(data_dir, "access.log")
            argv = api_argv("127.0.0.1", port, args.api_processes, args.threads, access_log=False) + [
                "--access-logfile", access_log, "--access-logformat", SERVER_TIME_FORMAT]
            api = Child("api", argv, env, os.path.join(data_dir, "api.log")).start()
            children.append(api)
            worker = Child("worker", worker_argv("bench@127.0.0.1", loglevel="WARNING"), env,
                           os.path.join(data_dir, "worker.log")).start()
            children.append(worker)
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/healthz", timeout=120, child=api)
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {TOKEN}"
            with open(os.path.join(ROOT, "examples", "digits_mlp.onnx"), "rb") as f:
                model_id = s.post(base + "/v1/models", data=f.read(),
                                  headers={"Content-Type": "application/octet-stream"}).json()["id"]
            warm = s.post(base + "/v1/jobs", json={"model": model_id, "samples": 2, "attacks": "none"}).json()["id"]
            while s.get(f"{base}/v1/jobs/{warm}").json()["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.2)  # the worker has loaded the pipeline: measure the steady state, not start-up
            load = Load(base, model_id, args.duration, args.interval, args.ramp)
            threads = [threading.Thread(target=load.client, args=(i,)) for i in range(args.clients)]
            load_before = os.getloadavg()
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started

            print_latencies(load, args, elapsed, load_before)
            print_server_times(access_log)
            lost, states = check_jobs(s, base, load.jobs)
        finally:
            for child in reversed(children):
                child.stop()

    five = sum(n for (_, code), n in load.statuses.items() if code >= 500)
    print(f"jobs {len(load.jobs)}: {dict(states)}   lost {len(lost)}   5xx {five}   "
          f"transport errors {len(load.errors)}")
    return 1 if five or lost or load.errors else 0


if __name__ == "__main__":
    sys.exit(main())
