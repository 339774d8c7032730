"""Bearer authentication and the per-tenant rate limit, applied before every /v1 request."""

from __future__ import annotations

from flask import g, request

from service.context import services
from service.problems import ApiProblem

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lipcert"'}
# views that count the request against the rate limit in their own Redis round trip (the polling hot path); each
# calls enforce_rate_limit before answering
COUNTED_BY_THE_VIEW = frozenset({"jobs.get_job"})


def authenticate() -> None:
    if not request.path.startswith("/v1/"):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiProblem(401, "missing_token", "send Authorization: Bearer <token>", headers=_CHALLENGE)
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "bad_authorization", "the Authorization header must be 'Bearer <token>'",
                         headers=_CHALLENGE)
    ctx = services()
    tenant = ctx.tokens.lookup(token.strip())
    if tenant is None:
        raise ApiProblem(401, "invalid_token", "the token is not valid", headers=_CHALLENGE)
    g.tenant = tenant
    if request.endpoint not in COUNTED_BY_THE_VIEW:
        enforce_rate_limit(ctx.records.allow_request(tenant.name, ctx.settings.rate_limit_per_s))


def enforce_rate_limit(allowed: bool) -> None:
    """429 when the tenant's request count of this second is over the limit."""
    if not allowed:
        limit = services().settings.rate_limit_per_s
        raise ApiProblem(429, "rate_limited", f"over {limit} requests per second", headers={"Retry-After": "1"})
