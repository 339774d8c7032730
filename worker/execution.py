"""Running one job: claim it, run the pipeline with progress and cancellation, store the signed report once.

The Celery task is a thin wrapper around :func:`execute`. A job is claimed with a lease in Redis that a thread
renews while the job runs, so a duplicate delivery of the same message (after a restart of Redis, say) waits
instead of running the job twice. The report is stored under the job id with a write-once primitive: a job that
is run again after its worker died mid-way produces exactly one report.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid

import redis

from service.core.records import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, Records, now
from service.core.settings import Settings
from service.core.store import ArtifactStore

log = logging.getLogger("lipcert.worker")
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


_OOM_WORDS = ("can't allocate memory", "cannot allocate memory", "not enough memory", "failed to allocate memory",
              "out of memory", "bad_alloc")


def _out_of_memory(e: BaseException) -> bool:
    """A refused allocation, as numpy (MemoryError), torch or onnxruntime (an error naming it) report it."""
    return isinstance(e, MemoryError) or any(w in str(e).lower() for w in _OOM_WORDS)


class LeaseHeld(Exception):
    """Another live worker is running this job; try again later."""


def time_limit_error(budget: float) -> dict:
    """The pipeline's own code for a run past its budget, for when Celery's time limit stops the job instead."""
    return {"code": "time_budget_exceeded",
            "message": f"the job ran past its time budget of {budget:g} s and was stopped"}


class _LeaseKeeper(threading.Thread):
    """Renews the job lease while the job runs."""

    def __init__(self, records: Records, job_id: str, holder: str, ttl_s: float):
        super().__init__(daemon=True, name=f"lease-{job_id}")
        self.records, self.job_id, self.holder, self.ttl_s = records, job_id, holder, ttl_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.ttl_s / 3):
            try:
                self.records.renew_lease(self.job_id, self.holder, self.ttl_s)
            except TRANSIENT:
                pass


class _Progress:
    """The pipeline's ``progress(stage, fraction, message)`` callback, written to the job record: stage, overall
    fraction and ETA (weighted and smoothed by :mod:`certify.progress`). Cancellation and the time budget are the
    pipeline's to check at each progress point."""

    def __init__(self, records: Records, job: dict):
        from certify.pipeline import STAGES
        from certify.progress import Eta

        self.records, self.job_id, self.stages = records, job["id"], STAGES
        self.eta = Eta()
        self.index = 0
        self.overall = 0.0

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        from certify.progress import overall_fraction

        if stage in self.stages:  # sub-stages the pipeline adds later count within the current stage
            self.index = self.stages.index(stage)
        overall = self.overall = max(self.overall, overall_fraction(self.stages, self.index, fraction))
        eta = self.eta.update(overall)
        try:
            self.records.update_job(self.job_id, stage=stage, progress=round(overall, 4),
                                    eta_s=None if eta is None else round(eta, 2), message=message)
        except TRANSIENT as e:  # progress is advisory; the job goes on while Redis is briefly away
            log.warning("progress of %s not recorded: %s", self.job_id, e)


class JobRunner:
    """Everything a worker process needs to run jobs; built once per process."""

    def __init__(self, settings: Settings, records: Records, store: ArtifactStore, device: str = "cpu"):
        self.settings, self.records, self.store, self.device = settings, records, store, device
        self._signer = None
        self.holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def lease_ttl(self) -> float:
        return max(5.0, 3 * self.settings.worker_heartbeat_s)

    def signer(self):
        if self._signer is None:
            from service.core.signing import load_signer

            self._signer = load_signer(self.settings)
        return self._signer

    def budget(self, job: dict) -> float:
        """The job's time budget as the service allows it (the soft time limit ``JobQueue.submit`` gave it)."""
        return max(1.0, min(float(job["config"].get("time_budget_s", 3600.0)), self.settings.max_job_seconds))

    def execute(self, job_id: str) -> str:
        """Run ``job_id`` to an end state and return it; LeaseHeld or a transient error means: retry later."""
        job = self.records.get_job(job_id)
        if job is None:
            log.warning("job %s has no record; dropping its message", job_id)
            return "missing"
        if job["state"] in TERMINAL:
            return job["state"]
        if job.get("cancel_requested") and job["state"] == QUEUED:
            self.records.transition(job, [QUEUED], CANCELLED, finished_at=now(), message="cancelled before it ran")
            self._notify(job_id)
            return CANCELLED
        if not self.records.take_lease(job_id, self.holder, self.lease_ttl):
            raise LeaseHeld(job_id)
        keeper = _LeaseKeeper(self.records, job_id, self.holder, self.lease_ttl)
        keeper.start()
        try:
            state = self._run(job)
        finally:
            keeper.stopped.set()
            try:
                self.records.release_lease(job_id, self.holder)
            except TRANSIENT:
                pass
        self._notify(job_id)
        return state

    def _run(self, job: dict) -> str:
        from certify.errors import ModelRejected
        from certify.pipeline import Cancelled

        job_id = job["id"]
        started = job.get("started_at") or now()
        existing = self.store.read("reports", f"{job_id}.json")
        attempts = int(job.get("attempts", 0))
        if existing is None and attempts >= self.settings.max_attempts:
            # every earlier attempt ended with its worker gone (killed, out of memory, crashed): a poison job
            # must not block the queue by coming back forever
            return self._fail(job, "worker_lost", f"the job's worker died {attempts} times while running it; "
                              "it is not tried again (a model too large for the worker's memory, say)")
        self.records.transition(job, [QUEUED, RUNNING], RUNNING, started_at=started, attempts=attempts + 1,
                                stage="load", message="started")
        if existing is not None:  # an earlier attempt stored the report, then died before recording success
            return self._succeed(job, json.loads(existing), job.get("stages") or [])
        budget = self.budget(job)
        from worker.memory import default_budget_mb, memory_budget

        memory_mb = self.settings.job_memory_mb or default_budget_mb()
        try:
            with memory_budget(memory_mb):
                result = self._pipeline(job, budget)
        except ModelRejected as e:
            return self._fail(job, e.code, e.message)
        except Cancelled:
            self.records.transition(job, [RUNNING], CANCELLED, finished_at=now(), message="cancelled while running")
            return CANCELLED
        except TRANSIENT:
            raise
        except Exception as e:
            from celery.exceptions import SoftTimeLimitExceeded

            if isinstance(e, SoftTimeLimitExceeded):
                return self._fail(job, **time_limit_error(budget))
            if _out_of_memory(e):
                log.warning("job %s ran out of memory: %s", job_id, e)
                return self._fail(job, "memory_limit_exceeded", f"the job needed more than its memory limit of "
                                  f"{memory_mb} MiB (LIPCERT_JOB_MEMORY_MB) or than the worker could allocate "
                                  f"({str(e)[:200]})")
            log.exception("job %s failed unexpectedly", job_id)
            return self._fail(job, "internal_error", f"the pipeline failed ({type(e).__name__})")
        envelope = result.envelope or self._sign(result.statement)
        from certify.report.dsse import dump_envelope

        if not self.store.put_once("reports", f"{job_id}.json", dump_envelope(envelope)):
            envelope = json.loads(self.store.read("reports", f"{job_id}.json"))
        self.records.add_stage_seconds(result.stages)
        return self._succeed(job, envelope, result.stages)

    def _pipeline(self, job: dict, budget: float):
        from certify.pipeline import run_pipeline

        model_path = self.store.local_path("models", job["model"])
        dataset_path = self.store.local_path("datasets", job["dataset"]) if job.get("dataset") else None
        if model_path is None or (job.get("dataset") and dataset_path is None):
            from certify.errors import ModelRejected

            raise ModelRejected("artifact_missing", "the model or dataset is no longer in the artifact store")
        config = dict(job["config"], time_budget_s=budget)  # the pipeline stops at the budget the service allows
        config["properties"] = [self._property_text(entry) for entry in config.get("properties") or []]
        if config.get("device", "auto") == "auto":
            config["device"] = self.device
        transfer_paths = [self.store.local_path("models", other) for other in job.get("transfer_to") or []]
        if any(path is None for path in transfer_paths):
            from certify.errors import ModelRejected

            raise ModelRejected("artifact_missing", "a transfer_to model is no longer in the artifact store")
        return run_pipeline(model_path, config, dataset=dataset_path, progress=self.progress(job),
                            cancelled=lambda: self.records.cancel_requested(job["id"]), signer=self.signer(),
                            model_name=job.get("model_name") or "model.onnx", transfer_to=transfer_paths)

    def _property_text(self, entry: dict) -> dict:
        """A job's property with its VNN-LIB text: one uploaded to /v1/properties is read from the store."""
        if "property_id" not in entry:
            return entry
        path = self.store.local_path("properties", entry["property_id"])
        if path is None:
            from certify.errors import ModelRejected

            raise ModelRejected("artifact_missing", f"the property {entry['name']} is no longer in the artifact store")
        with open(path, "rb") as f:
            return {"name": entry["name"], "vnnlib": f.read().decode("utf-8")}  # checked as UTF-8 at upload

    def progress(self, job: dict):
        """The progress callback of ``job``'s pipeline run."""
        return _Progress(self.records, job)

    def _sign(self, statement: dict) -> dict:
        from certify.report.dsse import sign_statement

        return sign_statement(statement, self.signer())

    def _succeed(self, job: dict, envelope: dict, stages: list) -> str:
        keyid = envelope["signatures"][0]["keyid"] if envelope.get("signatures") else None
        if self.records.transition(job, [RUNNING], SUCCEEDED, finished_at=now(), progress=1.0, eta_s=0.0,
                                   stage="report", message="report signed", stages=stages, report_keyid=keyid):
            self.records.set_latest_report(job["tenant"], job["model"], job["id"])
        return SUCCEEDED

    def _fail(self, job: dict, code: str, message: str) -> str:
        self.records.transition(job, [QUEUED, RUNNING], FAILED, finished_at=now(), eta_s=None,
                                error={"code": code, "message": message}, message=message)
        return FAILED

    def fail_over_time(self, job_id: str) -> None:
        """Called by the parent process after a hard time limit killed the job."""
        job = self.records.get_job(job_id)
        if job and job["state"] not in TERMINAL:
            self._fail(job, **time_limit_error(self.budget(job)))
            self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        """POST the final job document to its webhook, best effort (vetted and pinned, no redirects followed)."""
        job = self.records.get_job(job_id)
        url = job and job.get("webhook_url")
        if not url or job["state"] not in TERMINAL:
            return
        from service.core.webhooks import post_webhook

        body = json.dumps({"id": job_id, "state": job["state"], "model": job["model"], "error": job.get("error")})
        post_webhook(url, body.encode(), self.settings.webhook_allow_nets)  # never raises: a dead receiver is logged
