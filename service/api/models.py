"""POST /v1/models and GET /v1/models/{id}: ONNX uploads, content-addressed and checked by the safe loader."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import RAISE

from service.api.common import store_upload, tenant_artifact
from service.context import services
from service.schemas import ModelSchema, UploadQuerySchema

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="ONNX models")

_BODY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                     "multipart/form-data": {"schema": {"type": "object",
                                                        "properties": {"file": {"type": "string",
                                                                                "format": "binary"}}}}}}


def describe_model(path: str, max_bytes: int) -> dict:
    """Structural facts about the stored model; refusals raise ModelRejected."""
    import onnx

    from certify.errors import ModelRejected
    from certify.load import Limits, check_allocations_at_batch, load_onnx, opset_of
    from certify.summary import summarize

    limits = Limits(max_file_bytes=max_bytes)
    try:
        model = load_onnx(path, limits=limits, require_supported=False)
    except ModelRejected as e:
        if e.code != "dynamic_dimension":
            raise
        with open(path, "rb") as f:  # every structural check passed; only the sizes wait for the job's shapes
            model = onnx.load_from_string(f.read())
        check_allocations_at_batch(model, limits)  # what is static already is checked now
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
@blp.arguments(UploadQuerySchema(), location="query", as_kwargs=True, unknown=RAISE)
@blp.doc(requestBody=_BODY)
@blp.response(201, ModelSchema)
@blp.alt_response(200, schema=ModelSchema, description="the same bytes were uploaded before")
def upload_model(name=None):
    """Upload an ONNX model (raw body or multipart part 'file'); the id is sha256 of the bytes."""
    return store_upload("models", services().settings.max_model_bytes, describe_model, "model.onnx", name)


@blp.route("/<string:model_id>", methods=["GET"])
@blp.response(200, ModelSchema)
def get_model(model_id):
    """A model record of this tenant."""
    return tenant_artifact("models", model_id, "model")
