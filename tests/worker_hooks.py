"""The service tests' worker: the real worker app, whose jobs of tenants ``slow`` and ``stuck`` sleep at each
progress point, so that fault tests can act while a job runs.

A ``stuck`` job blocks at its first progress point and sleeps through Celery's soft time limit, like native code
that never returns to Python, so only the hard limit ends it. Started as ``celery -A worker_hooks:app worker`` (see
``service_fixtures.ServiceHandle.start_worker``).
"""

from __future__ import annotations

import math
import time

from service.core.settings import Settings
from worker.celery_app import make_celery
from worker.execution import JobRunner

SLOW_DELAY_S = 0.3
DELAYS = {"slow": SLOW_DELAY_S, "stuck": SLOW_DELAY_S}  # tenant -> seconds slept at each progress point
STUCK = ("stuck",)


def sleep(seconds: float, through_soft_limit: bool) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    end = math.inf if through_soft_limit else time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(min(left, 3600))
        except SoftTimeLimitExceeded:
            if not through_soft_limit:
                raise


class SlowRunner(JobRunner):
    def progress(self, job: dict):
        report, tenant = super().progress(job), job["tenant"]
        if tenant not in DELAYS:
            return report

        def slowly(stage: str, fraction: float, message: str) -> None:
            sleep(DELAYS[tenant], tenant in STUCK)
            report(stage, fraction, message)

        return slowly


app = make_celery(Settings.from_env(), runner_class=SlowRunner)
