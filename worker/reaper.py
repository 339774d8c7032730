"""The reaper: finds jobs stranded after Redis lost data and queues them again (or fails them).

A job record says queued or running, but nothing will ever run it when its message is gone from the broker (Redis
restarted without its last writes, a flushed queue): no message in the queue lists, none in kombu's ``unacked``
hash, and no worker holding the job's lease. Such a job is queued again, at most ``max_attempts`` times; after that
it fails with ``job_lost`` so it does not wait forever. Only jobs untouched for a grace period are considered, so a
job between its record and its message (the API writes them one after the other) is never mistaken for one.
"""

from __future__ import annotations

import json
import logging
import time

from service.core.queue import UNACKED
from service.core.records import FAILED, PREFIX, QUEUED, RUNNING, Records, now, queue_lists

log = logging.getLogger("lipcert.worker")
LOCK = PREFIX + "reaper"


def _task_id(raw: str) -> str | None:
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing key]
            message = message[0]
        return message["headers"]["id"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def messages_in_flight(records: Records, queue: str) -> set[str]:
    """The task ids (= job ids) of every message waiting in the queue or held by a worker."""
    pipe = records.r.pipeline(transaction=True)  # one snapshot: kombu moves messages between these atomically
    for name in queue_lists(queue):
        pipe.lrange(name, 0, -1)
    pipe.hvals(UNACKED)
    return {_task_id(raw) for values in pipe.execute() for raw in values} - {None}


def reap(records: Records, settings, submit, holder: str, grace_s: float) -> list[str]:
    """Requeue (``submit(job_id, budget)``) or fail stranded jobs; returns their ids. One reaper at a time."""
    if not records.r.set(LOCK, holder, nx=True, ex=max(1, int(grace_s / 2))):
        return []
    stranded = []
    ids = records.r.sunion(PREFIX + "state:" + QUEUED, PREFIX + "state:" + RUNNING)
    candidates = ids - messages_in_flight(records, settings.queue) if ids else set()
    if candidates:  # a worker that just popped a message records it as unacked a moment later: look twice
        time.sleep(1.0)
        candidates -= messages_in_flight(records, settings.queue)
    for job_id in sorted(candidates):
        job = records.get_job(job_id)
        if (job is None or job["state"] not in (QUEUED, RUNNING) or time.time() - job["updated_at"] < grace_s
                or records.r.exists(PREFIX + "lease:" + job_id)):
            continue
        requeued = int(job.get("requeued", 0))
        if requeued >= settings.max_attempts:
            records.transition(job, [QUEUED, RUNNING], FAILED, finished_at=now(), eta_s=None, message="lost",
                               error={"code": "job_lost", "message": "the job's queue message was lost "
                                      f"{requeued + 1} times (the job store lost data); submit it again"})
        else:
            records.update_job(job_id, requeued=requeued + 1, message="queued again after its message was lost")
            submit(job_id, float(job["config"].get("time_budget_s", settings.max_job_seconds)))
        log.warning("job %s was stranded (state %s, no message, no lease); %s", job_id, job["state"],
                    "failed" if requeued >= settings.max_attempts else "queued again")
        stranded.append(job_id)
    return stranded
