"""Service fixtures: a real Redis (embedded, or REDIS_URL), the API under gunicorn and a real Celery worker.

Everything listens on loopback and is stopped at the end of the session. Tenants: ``alice`` and ``bob`` (normal),
``alice`` again with a read-only token, ``slow`` whose jobs sleep at each progress point so that fault tests can act
while a job runs, and ``stuck`` whose sleeps also ignore the soft time limit, so only the hard limit stops its jobs
(the tests' worker app, ``worker_hooks``).
"""

from __future__ import annotations

import http.server
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef",
          "alice_ro": "alice-readonly-0123456789abcdef", "slow": "slow-token-0123456789abcdef",
          "stuck": "stuck-token-0123456789abcdef"}
JOB_QUOTA = 6  # queued + running jobs per tenant
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class ServiceHandle:
    base_url: str
    data_dir: str
    env: dict
    redis: object | None  # service.runner.EmbeddedRedis, None with an external REDIS_URL
    api: object
    workers: list = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def session(self, who: str = "alice"):
        import requests

        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {TOKENS[who]}"
        return s

    def start_worker(self):
        from service.runner import Child, worker_argv

        name = f"test{len(self.workers)}@127.0.0.1"
        child = Child(name, worker_argv(name, loglevel="WARNING", app="worker_hooks:app"), self.env,
                      os.path.join(self.data_dir, f"worker{len(self.workers)}.log")).start()
        self.workers.append(child)
        return child

    def live_worker(self):
        return next(w for w in reversed(self.workers) if w.running)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url("/readyz"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not become ready")

    def wait_job(self, job_id: str, who: str = "alice", states=TERMINAL, timeout: float = 60.0) -> dict:
        """Poll until the job is in one of ``states`` (tolerating a Redis restart's brief 503s)."""
        s = self.session(who)
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            r = s.get(self.url(f"/v1/jobs/{job_id}"), timeout=5)
            if r.status_code == 200:
                job = r.json()
                if job["state"] in states:
                    return job
            elif r.status_code != 503:
                raise AssertionError(f"GET job answered {r.status_code}: {r.text}")
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not reach {states}; last seen {job}")

    def upload(self, kind: str, path_or_bytes, who: str = "alice", name: str | None = None):
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
        params = {"name": name} if name else None
        return self.session(who).post(self.url(f"/v1/{kind}"), data=data, params=params,
                                      headers={"Content-Type": "application/octet-stream"}, timeout=30)

    def submit(self, model: str, who: str = "alice", **config):
        body = {"model": model, "samples": 4, "attacks": "none", **config}
        return self.session(who).post(self.url("/v1/jobs"), json=body, timeout=30)


class RecordingServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that records (method, path, Host) and answers with ``status`` (+ Location)."""

    def __init__(self, status: int = 204, location: str | None = None):
        self.hits, self.status, self.location = [], status, location
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.hits.append((self.command, self.path, self.headers["Host"]))
                self.send_response(server.status)
                if server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    sys.path.insert(0, ROOT)
    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key
    from service.runner import Child, EmbeddedRedis, api_argv, free_port, wait_http

    data_dir = str(tmp_path_factory.mktemp("lipcert-service"))
    external = os.environ.get("REDIS_URL")
    redis_child = None if external else EmbeddedRedis(os.path.join(data_dir, "redis")).start()
    port = free_port()
    env = dict(os.environ)
    env.update({
        "REDIS_URL": external or redis_child.url,
        "LIPCERT_DATA_DIR": data_dir,
        "LIPCERT_TOKENS": ",".join([f"alice:{TOKENS['alice']}", f"bob:{TOKENS['bob']}",
                                    f"alice:{TOKENS['alice_ro']}:ro", f"slow:{TOKENS['slow']}",
                                    f"stuck:{TOKENS['stuck']}"]),
        "LIPCERT_WEBHOOK_ALLOW_NETS": "127.0.0.0/8",
        "LIPCERT_VISIBILITY_TIMEOUT": "3",
        "LIPCERT_WORKER_HEARTBEAT_S": "0.5",
        # the workers' 0.5 s heartbeats must beat the 3 s visibility timeout on a loaded test machine; the lower
        # priority of production workers is tested on `lipcert serve` (test_service_serve.py)
        "LIPCERT_WORKER_NICE": "0",
        "LIPCERT_MAX_MODEL_BYTES": str(1024 * 1024),
        "LIPCERT_MAX_DATASET_BYTES": str(1024 * 1024),
        "LIPCERT_MAX_PROPERTY_BYTES": str(1024 * 1024),
        "LIPCERT_HARD_LIMIT_GRACE_S": "5",
        "LIPCERT_JOB_MEMORY_MB": "1024",
        "LIPCERT_RATE_LIMIT": "100000",
        "LIPCERT_JOB_QUOTA": str(JOB_QUOTA),
        "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    })
    ensure_signing_key(Settings.from_env(env))
    api = Child("api", api_argv("127.0.0.1", port, processes=1, threads=16, access_log=False), env,
                os.path.join(data_dir, "api.log")).start()
    handle = ServiceHandle(f"http://127.0.0.1:{port}", data_dir, env, redis_child, api)
    try:
        wait_http(handle.url("/healthz"), timeout=60, child=api)
        handle.start_worker()
        handle.wait_ready()
        yield handle
    except Exception:
        for log in ("api.log", "worker0.log"):
            path = os.path.join(data_dir, log)
            if os.path.exists(path):
                sys.stderr.write(open(path).read()[-4000:])
        raise
    finally:
        import signal

        for child in [*handle.workers, api]:  # all at once: their shutdowns overlap
            child.signal_group(signal.SIGTERM)
        for child in [*handle.workers, api]:
            child.stop(timeout=10)
        if redis_child is not None:
            redis_child.stop()
        shutil.rmtree(os.path.join(data_dir, "store"), ignore_errors=True)


def tiny_model_bytes() -> bytes:
    """A 4-8-3 ReLU network: the cheapest model the whole pipeline runs on."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
               for n, s in (("w1", (8, 4)), ("b1", (8,)), ("w2", (3, 8)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.fixture(scope="session")
def tiny_model(service) -> str:
    """The tiny model, uploaded for tenants alice and slow (same bytes, so the same id)."""
    ids = set()
    for who in ("alice", "slow", "stuck"):
        r = service.upload("models", tiny_model_bytes(), who=who, name="tiny.onnx")
        assert r.status_code in (200, 201), r.text
        ids.add(r.json()["id"])
    (model_id,) = ids
    return model_id


@pytest.fixture(scope="session")
def digits_model(service) -> str:
    r = service.upload("models", os.path.join(EXAMPLES, "digits_mlp.onnx"), name="digits_mlp.onnx")
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture(scope="session")
def digits_dataset(service) -> str:
    r = service.upload("datasets", os.path.join(EXAMPLES, "digits_test.npz"), name="digits_test.npz")
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]
