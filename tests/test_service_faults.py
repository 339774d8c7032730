"""Faults with real processes: a worker killed mid-job, Redis restarted mid-queue, cancellation, time limits.

Jobs of tenant ``slow`` sleep at each progress point (the worker's test-only delay hook), so they run for a few
seconds and the test can act while they are running.
"""

from __future__ import annotations

import os
import time

import pytest


@pytest.fixture(scope="module")
def slow_model(service, tiny_model) -> str:
    return tiny_model  # uploaded for tenant slow too


def _submit(service, model: str, **config) -> str:
    r = service.submit(model, who="slow", **config)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _wait_running(service, job_id: str, min_progress: float = 0.0) -> dict:
    s = service.session("slow")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = s.get(service.url(f"/v1/jobs/{job_id}")).json()
        if job["state"] == "running" and job["progress"] > min_progress:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran")


def _report_files(service) -> list[str]:
    return sorted(os.listdir(os.path.join(service.data_dir, "store", "reports")))


def test_cancel_a_running_job(service, slow_model):
    job_id = _submit(service, slow_model)
    _wait_running(service, job_id)
    r = service.session("slow").delete(service.url(f"/v1/jobs/{job_id}"))
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = service.wait_job(job_id, who="slow")
    assert job["state"] == "cancelled" and job["error"] is None
    assert f"{job_id}.json" not in _report_files(service)


def test_cancel_a_queued_job_never_runs(service, slow_model):
    running = _submit(service, slow_model)
    queued = _submit(service, slow_model)
    s = service.session("slow")
    assert s.delete(service.url(f"/v1/jobs/{queued}")).json()["state"] == "cancelled"
    s.delete(service.url(f"/v1/jobs/{running}"))
    service.wait_job(running, who="slow")
    job = service.wait_job(queued, who="slow")
    assert job["state"] == "cancelled" and job["started_at"] is None and job["attempts"] == 0


def test_time_limit_fails_the_job_and_frees_the_worker(service, slow_model):
    job_id = _submit(service, slow_model, time_budget_s=1)
    job = service.wait_job(job_id, who="slow")
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "time_budget_exceeded" and "time budget of 1 s" in job["error"]["message"]
    after = service.submit(slow_model).json()["id"]
    assert service.wait_job(after)["state"] == "succeeded"


def test_worker_killed_mid_job_reruns_once(service, slow_model):
    job_id = _submit(service, slow_model)
    _wait_running(service, job_id, min_progress=0.2)
    service.live_worker().kill()  # SIGKILL the worker and its pool child: no chance to clean up
    service.start_worker()
    job = service.wait_job(job_id, who="slow", timeout=90)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    assert _report_files(service).count(f"{job_id}.json") == 1
    latest = service.session("slow").get(service.url("/v1/reports"), params={"model": slow_model})
    assert latest.headers["X-Lipcert-Job"] == job_id


def test_redis_restart_keeps_queued_jobs(service, slow_model):
    if service.redis is None:
        pytest.skip("an external REDIS_URL is in use; only the embedded Redis is restarted")
    jobs = [_submit(service, slow_model) for _ in range(2)]  # one running, one queued
    _wait_running(service, jobs[0])
    service.redis.stop()  # SIGTERM: Redis flushes its append-only file and exits
    time.sleep(0.5)
    service.redis.start()
    for job_id in jobs:
        job = service.wait_job(job_id, who="slow", timeout=120)
        assert job["state"] == "succeeded", job
    files = _report_files(service)
    assert all(files.count(f"{j}.json") == 1 for j in jobs)
    service.wait_ready()
