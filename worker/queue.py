"""Sending jobs to the workers (used by the API)."""

from __future__ import annotations

from service.settings import Settings
from worker.celery_app import TASK_NAME, make_celery


class JobQueue:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.app = make_celery(settings)

    def warm(self) -> None:
        """Do once, when an API process starts, what the first send would do while a request waits (about 0.1 s:
        finalising the Celery app, building its router, producer pool and result backend, connecting to the
        broker, declaring the queue)."""
        with self.app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            producer.maybe_declare(self.app.amqp.queues[self.settings.queue])  # what the worker declares too
        _ = self.app.amqp.router, self.app.amqp.send_task_message, self.app.backend  # each built on first use

    def submit(self, job_id: str, budget_s: float) -> None:
        """Queue ``job_id`` with a soft time limit of its budget and a hard one a grace period later. The job's state
        lives in its record, never in Celery's result store: ``ignore_result`` spares the two round trips (a
        SUBSCRIBE to the result channel and its UNSUBSCRIBE) that Celery otherwise makes on every send."""
        soft = max(1.0, min(budget_s, self.settings.max_job_seconds))
        self.app.send_task(TASK_NAME, args=[job_id], queue=self.settings.queue, task_id=job_id,
                           soft_time_limit=soft, time_limit=soft + self.settings.hard_limit_grace_s, ignore_result=True,
                           retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
