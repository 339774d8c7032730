"""The worker's Celery app, built by :func:`make_celery` from explicit settings.

The configuration is the one the API sends with (``service.core.queue.celery_config``); the task and the heartbeat
are registered on the app here, so nothing reads the environment or builds an app at import time. The command
line entry point (``worker.main``) is the one place that reads the settings from the environment.
"""

from __future__ import annotations

from celery import Celery

from certify.threads import use_passive_wait
from service.core.queue import celery_config
from service.core.settings import Settings
from worker import heartbeat, priority, tasks
from worker.execution import JobRunner

use_passive_wait()  # before the worker (and its prefork children) load torch


def make_celery(settings: Settings, runner_class: type[JobRunner] = JobRunner) -> Celery:
    """A worker app for ``settings``; each process runs its jobs with one ``runner_class`` built after the fork."""
    app = Celery("lipcert")
    app.conf.update(celery_config(settings))
    tasks.register(app, settings, runner_class)
    heartbeat.install(app, settings)
    priority.install(app, settings)
    return app
