"""The Celery task: a thin wrapper that hands the job id to :class:`worker.execution.JobRunner`.

Retries are for transient infrastructure errors only (Redis away, another worker holding the job's lease); a bad
model or configuration fails the job inside the runner and is never retried.
"""

from __future__ import annotations

import os
import threading

from celery import Celery, Task, signals
from celery.exceptions import TimeLimitExceeded

from service.core.queue import TASK_NAME
from service.core.records import Records, connect
from service.core.settings import Settings
from service.core.store import LocalArtifactStore
from worker.execution import TRANSIENT, JobRunner, LeaseHeld


class RunnerSlot:
    """One runner per process, built on first use, after the fork (no Redis connection or CUDA state crosses a
    fork)."""

    def __init__(self, settings: Settings, runner_class: type[JobRunner]):
        self.settings, self.runner_class = settings, runner_class
        self._runner: JobRunner | None = None

    def get(self) -> JobRunner:
        if self._runner is None:
            s = self.settings
            self._runner = self.runner_class(s, Records(connect(s.redis_url)), LocalArtifactStore(s.store_dir),
                                             device=os.environ.get("LIPCERT_DEVICE", "cpu"))
        return self._runner


def register(app: Celery, settings: Settings, runner_class: type[JobRunner] = JobRunner):
    """Register the job task on ``app``; returns it."""
    slot = RunnerSlot(settings, runner_class)

    class JobTask(Task):
        def on_failure(self, exc, task_id, args, kwargs, einfo):
            if isinstance(exc, TimeLimitExceeded) and args:  # the hard limit killed the process running the job
                slot.get().fail_over_time(args[0])

    @app.task(name=TASK_NAME, bind=True, base=JobTask, max_retries=None)
    def run_job(self, job_id: str) -> str:
        try:
            return slot.get().execute(job_id)
        except LeaseHeld as e:
            raise self.retry(exc=e, countdown=max(2, settings.visibility_timeout_s // 2)) from None
        except TRANSIENT as e:
            if self.request.retries >= 20:
                raise
            raise self.retry(exc=e, countdown=min(30, 2 ** min(self.request.retries, 5))) from None

    return run_job


@signals.worker_process_init.connect
def _warm_up(**_):
    """Import the pipeline (torch and friends) in the pool child right after it starts, in the background: the
    first job does not pay for it, and the child still reports ready within Celery's start-up timeout."""

    def load():
        import certify.pipeline  # noqa: F401

    threading.Thread(target=load, daemon=True, name="lipcert-warm-up").start()
