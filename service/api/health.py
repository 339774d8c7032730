"""Liveness, readiness and metrics: /healthz, /readyz, /metrics (no token needed)."""

from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from service.context import services
from service.metrics import render_metrics
from service.problems import ApiProblem

blp = Blueprint("health", __name__, description="Health and metrics")


class StatusSchema(Schema):
    status = fields.String(required=True)
    workers = fields.Integer(metadata={"description": "workers with a recent heartbeat (/readyz)"})


@blp.route("/healthz", methods=["GET"])
@blp.response(200, StatusSchema)
def healthz():
    """The API process is up."""
    return {"status": "ok"}


@blp.route("/readyz", methods=["GET"])
@blp.response(200, StatusSchema)
@blp.alt_response(503, description="Redis does not answer, or no worker is alive")
def readyz():
    """Redis answers and at least one worker sent a heartbeat recently."""
    ctx = services()
    try:
        ctx.records.r.ping()
    except Exception:
        raise ApiProblem(503, "redis_unreachable", "Redis does not answer") from None
    workers = ctx.records.live_workers(within_s=max(10.0, 5 * ctx.settings.worker_heartbeat_s))
    if workers == 0:
        raise ApiProblem(503, "no_workers", "no worker heartbeat in the last seconds")
    return {"status": "ready", "workers": workers}


@blp.route("/metrics", methods=["GET"])
@blp.doc(responses={"200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics():
    """Prometheus text format: jobs by state, queue depth, upload bytes, stage durations."""
    ctx = services()
    return Response(render_metrics(ctx.records, ctx.settings.queue), mimetype="text/plain; version=0.0.4")
