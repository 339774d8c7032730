"""What a request handler reaches through the app: settings, records, store, tokens, the task queue."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g

from service.core.queue import JobQueue
from service.core.records import Records
from service.core.settings import Settings
from service.core.store import ArtifactStore
from service.core.tokens import Tenant, TokenRegistry
from service.problems import ApiProblem


@dataclass
class Services:
    settings: Settings
    records: Records
    store: ArtifactStore
    tokens: TokenRegistry
    queue: JobQueue
    public_keys: list


def services() -> Services:
    return current_app.extensions["lipcert"]


def tenant() -> Tenant:
    return g.tenant


def require_write() -> Tenant:
    """The tenant, when its token may change things (read-only tokens are for CI gates)."""
    t = g.tenant
    if t.read_only:
        raise ApiProblem(403, "read_only_token", "this token is read-only; it cannot upload or change jobs")
    return t
