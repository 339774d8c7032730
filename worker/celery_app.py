"""The Celery application: Redis broker and result store, late acks, one job at a time per worker process.

A message stays in Redis until its job ends (``acks_late``); if the worker dies, the message becomes visible again
after ``visibility_timeout`` (the worker heartbeat keeps the messages of a live worker invisible, see
``worker.heartbeat``) and another worker runs the job.
"""

from __future__ import annotations

from celery import Celery

from certify.threads import use_passive_wait
from service.settings import Settings

use_passive_wait()  # before worker.tasks (and the prefork children) load torch

TASK_NAME = "lipcert.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("lipcert", broker=settings.redis_url, backend=settings.redis_url,
                 include=["worker.tasks", "worker.heartbeat"])
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
        },
        result_backend_transport_options={"socket_timeout": 5, "socket_connect_timeout": 2},
        redis_socket_timeout=5,
        redis_socket_connect_timeout=2,
    )
    return app


settings = Settings.from_env()
app = make_celery(settings)
