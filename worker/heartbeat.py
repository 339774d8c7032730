"""The worker's heartbeat, run in the main worker process.

Every few seconds it (1) records the worker as alive (``/readyz`` needs one), (2) runs the reaper
(``worker.reaper``: jobs whose message Redis lost are queued again) and (3) refreshes, in kombu's
``unacked_index``, the delivery time of every message this worker holds. A live worker's messages therefore never
reach the visibility timeout, however long the job runs, while the messages of a worker that died (SIGKILL, power
loss) become visible again after ``visibility_timeout`` and another worker picks them up.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import signals

log = logging.getLogger("lipcert.worker")
UNACKED_INDEX = "unacked_index"  # kombu's default key for the delivery times of unacknowledged messages


class Heartbeat(threading.Thread):
    def __init__(self, records, name: str, interval_s: float, settings=None):
        super().__init__(daemon=True, name="lipcert-heartbeat")
        self.records, self.name_, self.interval_s, self.settings = records, name, interval_s, settings
        self.stopped = threading.Event()
        self._queue = None
        self._next_reap = 0.0

    @property
    def reap_grace_s(self) -> float:
        """How long a job must sit untouched without a message before it counts as stranded."""
        return 2 * self.settings.visibility_timeout_s + 5

    def reap(self) -> None:
        from worker.reaper import reap

        if self.settings is None or time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + self.reap_grace_s / 2
        if self._queue is None:
            from worker.queue import JobQueue

            self._queue = JobQueue(self.settings)
        reap(self.records, self.settings, self._queue.submit, self.name_, self.reap_grace_s)

    def _held_tags(self) -> list[str]:
        from celery.worker import state

        tags = []
        for request in list(state.reserved_requests):
            tag = getattr(getattr(request, "message", None), "delivery_tag", None)
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


_beat: Heartbeat | None = None


@signals.worker_ready.connect
def _start(sender=None, **_):
    global _beat
    from service.records import Records, connect
    from worker.celery_app import settings

    _beat = Heartbeat(Records(connect(settings.redis_url)), sender.hostname, settings.worker_heartbeat_s, settings)
    _beat.beat()
    _beat.start()


@signals.worker_shutdown.connect
def _stop(sender=None, **_):
    if _beat is not None:
        _beat.stopped.set()
        try:
            _beat.records.worker_gone(_beat.name_)
        except Exception:
            pass
