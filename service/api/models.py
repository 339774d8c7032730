"""POST /v1/models and GET /v1/models/{id}: ONNX uploads, content-addressed and checked by the safe loader."""

from __future__ import annotations

from flask_smorest import Blueprint

from service.api.common import iso
from service.context import require_write, services, tenant
from service.problems import ApiProblem
from service.records import now
from service.schemas import ModelSchema, UploadQuerySchema
from service.uploads import receive

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="ONNX models")

_BODY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                     "multipart/form-data": {"schema": {"type": "object",
                                                        "properties": {"file": {"type": "string",
                                                                                "format": "binary"}}}}}}


def describe_model(path: str, max_bytes: int) -> dict:
    """Structural facts about the stored model; refusals raise ModelRejected."""
    import onnx

    from certify.errors import ModelRejected
    from certify.load import Limits, load_onnx, opset_of
    from certify.summary import summarize

    limits = Limits(max_file_bytes=max_bytes)
    try:
        model = load_onnx(path, limits=limits, require_supported=False)
    except ModelRejected as e:
        if e.code != "dynamic_dimension":
            raise
        with open(path, "rb") as f:  # every structural check passed; only the sizes wait for the job's shapes
            model = onnx.load_from_string(f.read())
    summary = summarize(model)
    return {
        "opset": opset_of(model),
        "inputs": summary["inputs"],
        "outputs": summary["outputs"],
        "operators": summary["operators"],
        "unsupported_operators": summary["unsupported_operators"],
        "supported": not summary["unsupported_operators"],
    }


@blp.route("", methods=["POST"])
@blp.arguments(UploadQuerySchema, location="query", as_kwargs=True)
@blp.doc(requestBody=_BODY)
@blp.response(201, ModelSchema)
@blp.alt_response(200, schema=ModelSchema, description="the same bytes were uploaded before")
def upload_model(name=None):
    """Upload an ONNX model (raw body or multipart part 'file'); the id is sha256 of the bytes."""
    t = require_write()
    ctx = services()
    stored, filename = receive(ctx.store, "models", ctx.settings.max_model_bytes)
    ctx.records.add_upload_bytes("models", stored.size)
    existing = ctx.records.get_artifact(t.name, "models", stored.digest)
    if existing:
        return existing, 200
    try:
        facts = describe_model(ctx.store.local_path("models", stored.digest), ctx.settings.max_model_bytes)
    except Exception:
        if stored.created:
            ctx.store.discard("models", stored.digest)
        raise
    record = {"id": stored.digest, "name": name or filename or "model.onnx", "size": stored.size,
              **facts, "created_at": iso(now())}
    created = ctx.records.put_artifact(t.name, "models", record)
    return (record, 201) if created else (ctx.records.get_artifact(t.name, "models", stored.digest), 200)


@blp.route("/<string:model_id>", methods=["GET"])
@blp.response(200, ModelSchema)
def get_model(model_id):
    """A model record of this tenant."""
    record = services().records.get_artifact(tenant().name, "models", model_id)
    if record is None:
        raise ApiProblem(404, "not_found", f"no model {model_id}")
    return record
