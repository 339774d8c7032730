"""Small helpers the blueprints share: timestamps in ISO 8601 and record shaping."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import Response


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def json_response(doc: dict, status: int = 200, headers: dict | None = None) -> Response:
    """A document that is already exactly its response schema's fields (see ``jobs.render``), sent without a second
    pass through marshmallow: on the polling paths that pass cost more than the rest of the request."""
    return Response(json.dumps(doc), status=status, headers=headers, mimetype="application/json")


_slots: dict[int, threading.BoundedSemaphore] = {}  # one semaphore per configured limit (one per process in practice)
_slots_lock = threading.Lock()
SLOT_WAIT_S = 60.0


@contextmanager
def upload_check_slot(limit: int, wait_s: float = SLOT_WAIT_S):
    """Hold one of ``limit`` upload-check slots of this API process: a check holds about twice the file in memory
    (its bytes and the parsed model), so concurrent checks are bounded, not the uploads themselves.
    A request that waits ``wait_s`` for a slot gets 503 with Retry-After."""
    from service.problems import ApiProblem

    with _slots_lock:
        slots = _slots.setdefault(limit, threading.BoundedSemaphore(limit))
    if not slots.acquire(timeout=wait_s):
        raise ApiProblem(503, "upload_checks_busy", "other uploads are being checked; retry shortly",
                         headers={"Retry-After": "5"})
    try:
        yield
    finally:
        slots.release()


def store_upload(kind: str, max_bytes: int, describe, default_name: str, name: str | None):
    """Stream an upload into the store, describe it, and record it for the tenant.

    Returns ``(record, 201)`` for new bytes or ``(existing record, 200)`` for bytes uploaded before. ``describe(path,
    max_bytes)`` returns the record's facts or raises; a refused upload that created the stored file removes it.
    """
    from service.context import require_write, services
    from service.core.records import now
    from service.uploads import receive

    t = require_write()
    ctx = services()
    stored, filename = receive(ctx.store, kind, max_bytes)
    ctx.records.add_upload_bytes(kind, stored.size)
    existing = ctx.records.get_artifact(t.name, kind, stored.digest)
    if existing:
        return existing, 200
    try:
        with upload_check_slot(ctx.settings.upload_checks):
            facts = describe(ctx.store.local_path(kind, stored.digest), max_bytes)
    except Exception:
        if stored.created:
            ctx.store.discard(kind, stored.digest)
        raise
    record = {"id": stored.digest, "name": name or filename or default_name, "size": stored.size, **facts,
              "created_at": iso(now())}
    created = ctx.records.put_artifact(t.name, kind, record)
    return (record, 201) if created else (ctx.records.get_artifact(t.name, kind, stored.digest), 200)


def tenant_artifact(kind: str, artifact_id: str, what: str) -> dict:
    """The tenant's record of an artifact, or 404 (also for another tenant's)."""
    from service.context import services, tenant
    from service.problems import ApiProblem

    record = services().records.get_artifact(tenant().name, kind, artifact_id)
    if record is None:
        raise ApiProblem(404, "not_found", f"no {what} {artifact_id}")
    return record
