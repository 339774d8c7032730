"""The worker's job runner in-process, on a real Redis and a real artifact store: the service's cap on a job's time
budget reaches the pipeline, which stops the job with the same code as its own budget."""

from __future__ import annotations

import json
import os

import numpy as np
from service_fixtures import tiny_model_bytes
from worker_hooks import SlowRunner

from service.core.records import FAILED, QUEUED, SUCCEEDED, Records, connect, new_job_id, now
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


def test_a_job_recorded_with_inline_property_text_still_runs_it(tmp_path):
    """Job records written before inline text was stored as an upload hold the text itself: they still run it."""
    from test_properties import robustness_property

    from certify.report.dsse import peek_statement
    from worker.execution import JobRunner

    redis_child = EmbeddedRedis(str(tmp_path / "redis")).start()
    try:
        settings = Settings(redis_url=redis_child.url, data_dir=str(tmp_path))
        ensure_signing_key(settings)
        records, store = Records(connect(settings.redis_url)), LocalArtifactStore(settings.store_dir)
        model = store.put_stream("models", [tiny_model_bytes()], 1 << 20).digest
        text = robustness_property(np.full(4, 0.5), 0, 1e-4, n_out=3)
        job = {"id": new_job_id(), "tenant": "alice", "state": QUEUED, "model": model, "dataset": None,
               "config": {"samples": 4, "attacks": "none", "properties": [{"name": "old", "vnnlib": text}],
                          "property_timeout_s": 20},
               "attempts": 0, "created_at": now(), "updated_at": now()}
        records.create_job(job)
        assert JobRunner(settings, records, store).execute(job["id"]) == SUCCEEDED, records.get_job(job["id"])
        envelope = json.loads(store.read("reports", f"{job['id']}.json"))
        (result,) = peek_statement(envelope)["predicate"]["properties"]["results"]
        assert result["name"] == "old" and result["result"] in ("holds", "violated", "unknown")
    finally:
        redis_child.stop()
