"""Jobs: create (202 + Location), read with progress, list, cancel, and fetch the signed report."""

from __future__ import annotations

import hashlib
import json

from flask import Response, request, url_for
from flask_smorest import Blueprint
from marshmallow import RAISE

from certify.config import job_warnings
from certify.errors import ModelRejected
from service.api.common import iso, json_response
from service.auth import enforce_rate_limit
from service.context import require_write, services, tenant
from service.core.records import CANCELLED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, new_job_id, now
from service.core.store import TooLarge
from service.core.webhooks import WebhookRefused, check_webhook_target
from service.datasets import check_fit
from service.problems import ApiProblem
from service.schemas import REQUEST_ONLY, JobCreateSchema, JobListQuerySchema, JobPageSchema, JobSchema

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Certification jobs")

_TIMES = ("created_at", "started_at", "finished_at", "updated_at")


_PUBLIC = frozenset(JobSchema._declared_fields)  # what a job document shows (not tenant, report key, counters)


def render(job: dict) -> dict:
    """The public view of a job record: exactly JobSchema's fields, JSON-ready."""
    out = {k: v for k, v in job.items() if k in _PUBLIC}
    for k in _TIMES:
        out[k] = iso(job.get(k))
    out.setdefault("progress", 0.0)
    out["cancel_requested"] = bool(job.get("cancel_requested"))
    links = {"self": url_for("jobs.get_job", job_id=job["id"]),
             "model": url_for("models.get_model", model_id=job["model"])}
    if job["state"] == SUCCEEDED:
        links["report"] = url_for("jobs.get_report", job_id=job["id"])
    out["links"] = links
    return out


def _owned(job_id: str, job: dict | None = None) -> dict:
    """The tenant's job (``job`` when it was read already), or 404 (also for another tenant's)."""
    job = job or services().records.tenant_job(tenant().name, job_id)
    if job is None:
        raise ApiProblem(404, "not_found", f"no job {job_id}")
    return job


def _check_references(t_name: str, body: dict) -> tuple[dict, list[dict | None]]:
    """The model's record and the facts of each inline property (see :func:`_check_properties`), or 4xx."""
    records = services().records
    model = records.get_artifact(t_name, "models", body["model"])
    if model is None:
        raise ApiProblem(422, "unknown_model", f"no model {body['model']}; upload it to /v1/models first",
                         errors={"model": ["unknown model"]})
    if model.get("unsupported_operators"):
        ops = ", ".join(f"{k} ({v})" for k, v in sorted(model["unsupported_operators"].items()))
        raise ApiProblem(422, "unsupported_operator", f"the model uses unsupported operators: {ops}")
    if body.get("webhook_url"):
        try:
            check_webhook_target(body["webhook_url"], services().settings.webhook_allow_nets)
        except WebhookRefused as e:
            raise ApiProblem(422, "webhook_refused", str(e), errors={"webhook_url": [str(e)]}) from None
    for other in body["transfer_to"]:
        if records.get_artifact(t_name, "models", other) is None:
            raise ApiProblem(422, "unknown_model", f"no model {other}", errors={"transfer_to": ["unknown model"]})
    dataset = None
    if body["dataset"]:
        dataset = records.get_artifact(t_name, "datasets", body["dataset"])
        if dataset is None:
            raise ApiProblem(422, "unknown_dataset", f"no dataset {body['dataset']}",
                             errors={"dataset": ["unknown dataset"]})
    check_fit(model, dataset, body)
    inline = _check_properties(t_name, body["properties"], model)
    _check_device(body.get("device", "auto"))
    return model, inline


def _check_properties(t_name: str, entries: list[dict], model: dict) -> list[dict | None]:
    """Each uploaded property named exists for the tenant, and every property fits the model's declared sizes.
    Returns the facts of each inline one (the record of an upload of its text) and None for each uploaded one."""
    from certify.properties import check_declared_fit
    from certify.vnnlib import parse_vnnlib

    records = services().records
    inline: list[dict | None] = []
    for i, entry in enumerate(entries):
        field = f"properties[{i}]"
        if "property_id" in entry:
            record = records.get_artifact(t_name, "properties", entry["property_id"])
            if record is None:
                raise ApiProblem(422, "unknown_property", f"no property {entry['property_id']}; upload it to "
                                 "/v1/properties first", errors={f"{field}.property_id": ["unknown property"]})
            sizes = record["inputs"], record["outputs"]
            inline.append(None)
        else:
            parsed = parse_vnnlib(entry["vnnlib"])  # parsed by the schema already; cheap beside a job
            sizes = parsed.n_inputs, parsed.n_outputs
            inline.append({"inputs": parsed.n_inputs, "outputs": parsed.n_outputs, "cases": len(parsed.cases)})
        try:
            check_declared_fit(*sizes, model.get("inputs") or [], model.get("outputs") or [])
        except ModelRejected as e:
            raise ApiProblem(422, e.code, f"{field} ({entry['name']}): {e.message}",
                             errors={field: [e.message]}) from None
    return inline


def _store_inline(t_name: str, entries: list[dict], inline: list[dict | None]) -> list[dict]:
    """The job's properties with each inline text stored as a property upload of the tenant (listed under
    /v1/properties) and named by its id and size: a job record (and every GET of it) stays small however large
    the text; the worker reads the bytes from the store, as for any upload."""
    ctx = services()
    out = []
    for i, (entry, facts) in enumerate(zip(entries, inline, strict=True)):
        if facts is None:
            out.append(entry)
            continue
        try:
            stored = ctx.store.put_stream("properties", [entry["vnnlib"].encode()], ctx.settings.max_property_bytes)
        except TooLarge as e:
            raise ApiProblem(413, "payload_too_large", f"properties[{i}] ({entry['name']}): the text is {e}",
                             errors={f"properties[{i}].vnnlib": [str(e)]}) from None
        ctx.records.add_upload_bytes("properties", stored.size)
        ctx.records.put_artifact(t_name, "properties", {"id": stored.digest, "name": entry["name"],
                                                        "size": stored.size, **facts, "created_at": iso(now())})
        out.append({"name": entry["name"], "property_id": stored.digest, "size": stored.size})
    return out


def _cuda_index(device: str) -> str:
    return "cuda:0" if device == "cuda" else device  # torch's "cuda" is the first GPU


def _check_device(device: str) -> None:
    """A CUDA device must be one that a live worker runs on (workers publish theirs with each heartbeat)."""
    if not device.startswith("cuda"):
        return
    ctx = services()
    live = ctx.records.live_devices(within_s=max(10.0, 5 * ctx.settings.worker_heartbeat_s))
    if _cuda_index(device) not in {_cuda_index(d) for d in live}:
        have = ", ".join(sorted(live)) or "none"
        raise ApiProblem(422, "device_unavailable", f"no worker runs on {device} (live workers' devices: {have})",
                         errors={"device": [f"no worker runs on {device}"]})


MAX_JOB_BODY = 256 * 1024


def _job_too_large() -> ApiProblem:
    return ApiProblem(413, "payload_too_large", f"a job request is at most {MAX_JOB_BODY} bytes",
                      headers={"Connection": "close"})


@blp.before_request
def _json_only():
    if request.method != "POST":
        return
    if request.mimetype != "application/json":
        raise ApiProblem(415, "unsupported_media_type", "send the job as application/json")
    if (request.content_length or 0) > MAX_JOB_BODY:
        raise _job_too_large()
    # a chunked body has no length up front; werkzeug silently cuts it at max_content_length, so read one byte
    # more than the cap (cached for the JSON parser) and answer 413 when it is there
    request.max_content_length = MAX_JOB_BODY + 1
    if len(request.get_data(cache=True)) > MAX_JOB_BODY:
        raise _job_too_large()


@blp.route("", methods=["POST"])
@blp.arguments(JobCreateSchema())
@blp.response(202, JobSchema)
@blp.doc(parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}, "required": False,
                      "description": "a retry with the same key returns the same job"}])
def create_job(body):
    """Queue a certification job for an uploaded model (and dataset)."""
    t = require_write()
    ctx = services()
    model, inline = _check_references(t.name, body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 200):
        raise ApiProblem(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 200 characters")
    job_id = new_job_id()
    if key:
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        claimed, earlier_fingerprint = ctx.records.claim_idempotency_key(t.name, key, job_id, fingerprint)
        if claimed != job_id:
            if earlier_fingerprint != fingerprint:
                raise ApiProblem(422, "idempotency_key_reused",
                                 "this Idempotency-Key was used with a different request body; use a new key")
            earlier = ctx.records.tenant_job(t.name, claimed)
            if earlier is None:
                raise ApiProblem(409, "idempotency_in_progress", "a request with this key is still being handled")
            return json_response(render(earlier), 202, {"Location": url_for("jobs.get_job", job_id=claimed),
                                                        "Idempotent-Replayed": "true"})
    try:
        job = _enqueue(t.name, job_id, body, model, inline)
    except Exception:
        if key:
            ctx.records.release_idempotency_key(t.name, key, job_id)
        raise
    return json_response(render(job), 202, {"Location": url_for("jobs.get_job", job_id=job_id)})


def _enqueue(tenant_name: str, job_id: str, body: dict, model: dict, inline: list[dict | None]) -> dict:
    """Create the job record and queue it; a job that cannot be queued is removed again."""
    ctx = services()
    config = {k: v for k, v in body.items() if k not in REQUEST_ONLY}
    config["properties"] = _store_inline(tenant_name, body["properties"], inline)
    created = now()
    job = {"id": job_id, "tenant": tenant_name, "state": QUEUED, "stage": None, "progress": 0.0, "eta_s": None,
           "message": "queued", "model": body["model"], "model_name": model.get("name"), "dataset": body["dataset"],
           "config": config, "transfer_to": body["transfer_to"], "webhook_url": body["webhook_url"], "attempts": 0,
           "error": None, "warnings": job_warnings(body["dataset"] is not None), "created_at": created,
           "started_at": None, "finished_at": None, "updated_at": created}
    if not ctx.records.create_job(job, ctx.settings.job_quota):  # checks the quota and creates in one step
        raise ApiProblem(429, "job_quota_exceeded",
                         f"{ctx.settings.job_quota} jobs are already queued or running for this tenant",
                         headers={"Retry-After": "10"})
    try:
        ctx.queue.submit(job_id, float(config["time_budget_s"]))
    except Exception:
        ctx.records.discard_job(job)
        raise
    return job


@blp.route("", methods=["GET"])
@blp.arguments(JobListQuerySchema(), location="query", unknown=RAISE)
@blp.response(200, JobPageSchema)
def list_jobs(query):
    """This tenant's jobs, newest first; filter by state and model; page with cursor."""
    jobs, next_offset = services().records.list_jobs(tenant().name, query.get("state"), query.get("model"),
                                                     query["cursor"], query["limit"])
    next_url = None
    if next_offset is not None:
        args = {k: v for k, v in query.items() if k != "cursor"}
        next_url = url_for("jobs.list_jobs", cursor=next_offset, **args)
    return json_response({"items": [render(j) for j in jobs], "next": next_url})


@blp.route("/<string:job_id>", methods=["GET"])
@blp.response(200, JobSchema)
def get_job(job_id):
    """State, stage, progress, ETA, timestamps and, on failure, the error."""
    ctx = services()
    allowed, job = ctx.records.allow_and_get_job(tenant().name, ctx.settings.rate_limit_per_s, job_id)
    enforce_rate_limit(allowed)  # counted here: one Redis round trip for the whole request
    return json_response(render(_owned(job_id, job)))


@blp.route("/<string:job_id>", methods=["DELETE"])
@blp.response(202, JobSchema)
def cancel_job(job_id):
    """Cancel: a queued job never runs; a running one stops at its next progress point."""
    require_write()
    records = services().records
    job = _owned(job_id)
    if job["state"] in TERMINAL:
        raise ApiProblem(409, "job_finished", f"the job already ended ({job['state']})")
    records.request_cancel(job_id)
    if job["state"] == QUEUED:
        records.transition(job, [QUEUED], CANCELLED, finished_at=now(), message="cancelled before it ran")
    elif job["state"] == RUNNING:
        records.update_job(job_id, message="cancelling")
    return render(records.get_job(job_id))


def envelope_response(job_id: str) -> Response:
    data = services().store.read("reports", f"{job_id}.json")
    if data is None:
        raise ApiProblem(404, "not_found", "the report is missing from the artifact store")
    return Response(data, mimetype="application/json", headers={"X-Lipcert-Job": job_id,
                                                                "Cache-Control": "no-store"})


@blp.route("/<string:job_id>/report", methods=["GET"])
@blp.doc(responses={"200": {"description": "the signed report (a DSSE envelope)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}})
def get_report(job_id):
    """The signed report (DSSE envelope) once the job succeeded; 409 before."""
    job = _owned(job_id)
    if job["state"] != SUCCEEDED:
        detail = f"the job is {job['state']}; the report exists once it succeeds"
        raise ApiProblem(409, "report_not_ready", detail)
    return envelope_response(job_id)
