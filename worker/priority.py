"""Workers run at a lower CPU priority than the API (``LIPCERT_WORKER_NICE``, default 10).

A certification job is batch work that keeps a core busy for minutes; a poll of ``GET /v1/jobs/{id}`` is a
millisecond of work that a client waits for. When both share cores (``lipcert serve`` on one machine, or API and
worker pods on one node), the kernel's fair scheduler otherwise gives the job's process an equal share at every
tick and the API's tail latency grows by whole scheduling slices. At nice 10 the worker gets about a tenth of
the CPU weight of a nice-0 process whenever both want to run, and all of an otherwise idle core, so jobs lose
almost nothing on a machine where the API is mostly idle. An unprivileged process may raise its nice value but
not lower it again, so this only ever lowers the worker's priority.
"""

from __future__ import annotations

import os

from celery import Celery, signals

from service.core.settings import Settings


def lower_priority(nice: int) -> int:
    """Raise this process's nice value to ``nice`` (never lower it); the pool processes forked later inherit it.
    Returns the nice value now in force."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def install(app: Celery, settings: Settings) -> None:
    """Lower the priority of every worker of ``app`` as it starts, before its pool forks (Celery's worker_init)."""

    def lower(**_):
        lower_priority(settings.worker_nice)

    signals.worker_init.connect(lower, weak=False)
