"""The job queue's contract: the task name, the Celery configuration both sides use, and submitting a job.

Celery itself is not imported here. The API hands :class:`JobQueue` a Celery app built from :func:`celery_config`
(it only sends); the worker builds its own app from the same configuration (``worker.celery_app.make_celery``) and
registers the task under :data:`TASK_NAME`. So a message is sent by name and neither side imports the other.
"""

from __future__ import annotations

from typing import Protocol

from service.core.settings import Settings

TASK_NAME = "lipcert.run_job"
# The Redis keys of delivered, unacknowledged messages (a hash) and of their delivery times (a sorted set). They are
# named in the broker's transport options (documented kombu options; these are kombu's default names), so the
# worker's heartbeat and reaper read and refresh the keys the transport uses, not a guess at them.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def celery_config(settings: Settings) -> dict:
    """Redis broker and result store, late acks, one job at a time per worker process.

    A message stays in Redis until its job ends (``acks_late``); if the worker dies, the message becomes visible
    again after ``visibility_timeout`` (the worker heartbeat keeps the messages of a live worker invisible, see
    ``worker.heartbeat``) and another worker runs the job.
    """
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 7 * 24 * 3600,
        "task_track_started": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_key": UNACKED,
            "unacked_index_key": UNACKED_INDEX,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
        },
        "result_backend_transport_options": {"socket_timeout": 5, "socket_connect_timeout": 2},
        "redis_socket_timeout": 5,
        "redis_socket_connect_timeout": 2,
    }


class Sender(Protocol):
    """What :class:`JobQueue` needs of a Celery app."""

    def send_task(self, name: str, **options): ...


class JobQueue:
    """Submits jobs by task name through ``sender`` (a Celery app configured with :func:`celery_config`)."""

    def __init__(self, settings: Settings, sender: Sender):
        self.settings, self.sender = settings, sender

    def warm(self) -> None:
        """Do once, when an API process starts, what the first send would do while a request waits (about 0.1 s:
        finalising the Celery app, building its router, producer pool and result backend, connecting to the
        broker, declaring the queue)."""
        app = self.sender
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            producer.maybe_declare(app.amqp.queues[self.settings.queue])  # what the worker declares too
        _ = app.amqp.router, app.amqp.send_task_message, app.backend  # each built on first use

    def submit(self, job_id: str, budget_s: float) -> None:
        """Queue ``job_id`` with a soft time limit of its budget and a hard one a grace period later. The job's state
        lives in its record, never in Celery's result store: ``ignore_result`` spares the two round trips (a
        SUBSCRIBE to the result channel and its UNSUBSCRIBE) that Celery otherwise makes on every send."""
        soft = max(1.0, min(budget_s, self.settings.max_job_seconds))
        self.sender.send_task(TASK_NAME, args=[job_id], queue=self.settings.queue, task_id=job_id,
                              soft_time_limit=soft, time_limit=soft + self.settings.hard_limit_grace_s,
                              ignore_result=True, retry=True,
                              retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
