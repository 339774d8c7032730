"""Attacks and faults from the hardening review, each reproduced against the real service (gunicorn, Celery,
Redis on loopback)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from service_fixtures import RecordingServer
from test_service_errors import problem


def _wait_hits(server, n: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.hits) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_webhook_redirect_to_loopback_is_not_followed(service, tiny_model):
    """The allowed receiver answers 302 to another loopback service (a stand-in for cloud metadata)."""
    secret = RecordingServer()
    hook = RecordingServer(status=302, location=secret.url + "/latest/meta-data/iam/security-credentials/")
    try:
        job_id = service.submit(tiny_model, webhook_url=hook.url + "/hook").json()["id"]
        assert service.wait_job(job_id)["state"] == "succeeded"
        _wait_hits(hook)
        time.sleep(0.5)
        assert [h[:2] for h in hook.hits] == [("POST", "/hook")]
        assert secret.hits == []
    finally:
        for s in (hook, secret):
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("host", ["100.64.0.1", "100.100.100.200", "169.254.169.254", "0.0.0.0"])
def test_webhook_to_a_non_global_address_is_refused_at_creation(service, tiny_model, host):
    """The test service allows 127.0.0.0/8 only; carrier-grade NAT, link-local and 0.0.0.0 stay refused (the
    IPv6-wrapped forms are covered in test_webhooks; the URL field does not take IPv6 literals)."""
    body = problem(service.submit(tiny_model, webhook_url=f"http://{host}/hook"), 422, "webhook_refused")
    assert "internal address" in body["detail"]


def _pool_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_a_job_that_keeps_killing_its_worker_fails_with_worker_lost(service, tiny_model):
    """Each run's pool process is SIGKILLed (what the OOM killer does); after 3 runs the job fails, stays visible,
    and the queue moves on."""
    s = service.session("slow")
    job_id = s.post(service.url("/v1/jobs"), json={"model": tiny_model, "samples": 4, "attacks": "none"}).json()["id"]
    main = service.live_worker().proc.pid
    for attempt in (1, 2, 3):
        deadline = time.monotonic() + 60
        while True:
            job = s.get(service.url(f"/v1/jobs/{job_id}")).json()
            if job["state"] == "running" and job["attempts"] == attempt:
                break
            assert time.monotonic() < deadline and job["state"] in ("queued", "running"), job
            time.sleep(0.05)
        for child in _pool_children(main):
            os.kill(child, signal.SIGKILL)
    job = service.wait_job(job_id, who="slow", timeout=60)
    assert job["state"] == "failed" and job["error"]["code"] == "worker_lost" and job["attempts"] == 3, job
    assert "died 3 times" in job["error"]["message"]
    listed = s.get(service.url("/v1/jobs"), params={"state": "failed"}).json()["items"]
    assert job_id in [j["id"] for j in listed]
    after = service.submit(tiny_model).json()["id"]
    assert service.wait_job(after)["state"] == "succeeded"


def test_a_job_whose_message_redis_lost_is_queued_again(service, tiny_model):
    """Redis loses the queued message (a restart without its last writes); the reaper notices and requeues."""
    import redis

    from service.records import queue_lists

    s = service.session("slow")
    blocker = s.post(service.url("/v1/jobs"), json={"model": tiny_model, "samples": 4, "attacks": "none"}).json()
    stranded = s.post(service.url("/v1/jobs"), json={"model": tiny_model, "samples": 4, "attacks": "none"}).json()
    client = redis.Redis.from_url(service.env["REDIS_URL"], decode_responses=True)
    removed = 0
    for name in queue_lists("lipcert"):
        for raw in client.lrange(name, 0, -1):
            if stranded["id"] in raw:
                removed += client.lrem(name, 0, raw)
    assert removed == 1  # the message is gone; only the job record says 'queued'
    s.delete(service.url(f"/v1/jobs/{blocker['id']}"))
    job = service.wait_job(stranded["id"], who="slow", timeout=90)
    assert job["state"] == "succeeded", job
    assert client.hget(f"lipcert:job:{stranded['id']}", "requeued") == "1"
