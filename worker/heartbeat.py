"""The worker's heartbeat, run in the main worker process.

Every few seconds it (1) records the worker as alive (``/readyz`` needs one), (2) runs the reaper
(``worker.reaper``: jobs whose message Redis lost are queued again) and (3) refreshes, in the broker's
index of unacknowledged messages (``service.core.queue.UNACKED_INDEX``, named in the transport options), the
delivery time of every message this worker holds. A live worker's messages therefore never reach the visibility
timeout, however long the job runs, while the messages of a worker that died (SIGKILL, power
loss) become visible again after ``visibility_timeout`` and another worker picks them up.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import Celery, signals
from celery.worker import state

from service.core.queue import UNACKED_INDEX, JobQueue
from service.core.records import Records, connect
from service.core.settings import Settings
from worker.reaper import reap

log = logging.getLogger("lipcert.worker")


class Heartbeat(threading.Thread):
    def __init__(self, records, name: str, settings: Settings, queue: JobQueue | None = None):
        super().__init__(daemon=True, name="lipcert-heartbeat")
        self.records, self.name_, self.settings, self.queue = records, name, settings, queue
        self.interval_s = settings.worker_heartbeat_s
        self.stopped = threading.Event()
        self._next_reap = 0.0

    @property
    def reap_grace_s(self) -> float:
        """How long a job must sit untouched without a message before it counts as stranded."""
        return 2 * self.settings.visibility_timeout_s + 5

    def reap(self) -> None:
        if self.queue is None or time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + self.reap_grace_s / 2
        reap(self.records, self.settings, self.queue.submit, self.name_, self.reap_grace_s)

    @staticmethod
    def _held_tags() -> list[str]:
        """The delivery tags of the messages this worker process holds (``celery.worker.state``'s requests)."""
        tags = []
        for request in list(state.reserved_requests):
            tag = getattr(request.message, "delivery_tag", None)
            if tag:
                tags.append(tag)
        return tags

    def beat(self) -> None:
        self.records.worker_heartbeat(self.name_, os.environ.get("LIPCERT_DEVICE", "cpu"))
        tags = self._held_tags()
        if tags:
            self.records.r.zadd(UNACKED_INDEX, {tag: time.time() for tag in tags}, xx=True)
        self.reap()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
            except Exception as e:  # Redis away: keep trying; the worker itself reconnects
                log.warning("heartbeat failed: %s", e)
            self.stopped.wait(self.interval_s)

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.records.worker_gone(self.name_)
        except Exception:
            pass


def install(app: Celery, settings: Settings) -> None:
    """Run a :class:`Heartbeat` in the main process of every worker of ``app`` (Celery's worker signals)."""
    beats: list[Heartbeat] = []

    def start(sender=None, **_):
        if sender.app is not app:
            return
        beat = Heartbeat(Records(connect(settings.redis_url)), sender.hostname, settings, JobQueue(settings, app))
        beat.beat()
        beat.start()
        beats.append(beat)

    def stop(sender=None, **_):
        if sender.app is app:
            while beats:
                beats.pop().stop()

    signals.worker_ready.connect(start, weak=False)
    signals.worker_shutdown.connect(stop, weak=False)
