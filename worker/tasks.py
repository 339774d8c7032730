"""The Celery task: a thin wrapper that hands the job id to :class:`worker.execution.JobRunner`.

Retries are for transient infrastructure errors only (Redis away, another worker holding the job's lease); a bad
model or configuration fails the job inside the runner and is never retried.
"""

from __future__ import annotations

import os
import threading

from celery import Task, signals
from celery.exceptions import TimeLimitExceeded

from worker.celery_app import TASK_NAME, app, settings
from worker.execution import TRANSIENT, JobRunner, LeaseHeld

_runner: JobRunner | None = None


def runner() -> JobRunner:
    """One runner per process, built after the fork (no Redis connection or CUDA state crosses a fork)."""
    global _runner
    if _runner is None:
        from service.records import Records, connect
        from service.store import LocalArtifactStore

        _runner = JobRunner(settings, Records(connect(settings.redis_url)), LocalArtifactStore(settings.store_dir),
                            device=os.environ.get("LIPCERT_DEVICE", "cpu"))
    return _runner


@signals.worker_process_init.connect
def _warm_up(**_):
    """Import the pipeline (torch and friends) in the pool child right after it starts, in the background: the
    first job does not pay for it, and the child still reports ready within Celery's start-up timeout."""

    def load():
        import certify.pipeline  # noqa: F401

    threading.Thread(target=load, daemon=True, name="lipcert-warm-up").start()


class JobTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if isinstance(exc, TimeLimitExceeded) and args:  # the hard limit killed the process running the job
            runner().fail_over_time(args[0])


@app.task(name=TASK_NAME, bind=True, base=JobTask, max_retries=None)
def run_job(self, job_id: str) -> str:
    try:
        return runner().execute(job_id)
    except LeaseHeld as e:
        raise self.retry(exc=e, countdown=max(2, settings.visibility_timeout_s // 2)) from None
    except TRANSIENT as e:
        if self.request.retries >= 20:
            raise
        raise self.retry(exc=e, countdown=min(30, 2 ** min(self.request.retries, 5))) from None
