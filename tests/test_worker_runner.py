"""The worker's job runner in-process, on a real Redis and a real artifact store: the service's cap on a job's time
budget reaches the pipeline, which stops the job with the same code as its own budget."""

from __future__ import annotations

import os

from service_fixtures import tiny_model_bytes
from worker_hooks import SlowRunner

from service.core.records import FAILED, QUEUED, Records, connect, new_job_id, now
from service.core.settings import Settings
from service.core.signing import ensure_signing_key
from service.core.store import LocalArtifactStore
from service.runner import EmbeddedRedis


def test_the_service_time_cap_stops_a_job_that_asked_for_more(tmp_path):
    redis_child = EmbeddedRedis(str(tmp_path / "redis")).start()
    try:
        settings = Settings(redis_url=redis_child.url, data_dir=str(tmp_path), max_job_seconds=1.0)
        ensure_signing_key(settings)
        records, store = Records(connect(settings.redis_url)), LocalArtifactStore(settings.store_dir)
        model = store.put_stream("models", [tiny_model_bytes()], 1 << 20).digest
        job = {"id": new_job_id(), "tenant": "slow", "state": QUEUED, "model": model, "dataset": None,
               "config": {"samples": 4, "attacks": "none", "time_budget_s": 3600}, "attempts": 0,
               "created_at": now(), "updated_at": now()}
        records.create_job(job)
        runner = SlowRunner(settings, records, store)  # its jobs of tenant "slow" sleep at each progress point
        assert runner.budget(job) == 1.0
        assert runner.execute(job["id"]) == FAILED
        error = records.get_job(job["id"])["error"]
        assert error["code"] == "time_budget_exceeded" and "time budget of 1 s" in error["message"], error
        assert not os.listdir(os.path.join(settings.store_dir, "reports"))
    finally:
        redis_child.stop()
