"""POST /v1/datasets and GET /v1/datasets/{id}: evaluation sets (.npz with x and y, no pickles)."""

from __future__ import annotations

from flask_smorest import Blueprint

from service.api.common import iso
from service.api.models import _BODY
from service.context import require_write, services, tenant
from service.datasets import inspect_dataset
from service.problems import ApiProblem
from service.records import now
from service.schemas import DatasetSchema, UploadQuerySchema
from service.uploads import receive

blp = Blueprint("datasets", __name__, url_prefix="/v1/datasets", description="Evaluation datasets")


@blp.route("", methods=["POST"])
@blp.arguments(UploadQuerySchema, location="query", as_kwargs=True)
@blp.doc(requestBody=_BODY)
@blp.response(201, DatasetSchema)
@blp.alt_response(200, schema=DatasetSchema, description="the same bytes were uploaded before")
def upload_dataset(name=None):
    """Upload an .npz holding x (float, (N, ...)) and y (int labels, (N,))."""
    t = require_write()
    ctx = services()
    stored, filename = receive(ctx.store, "datasets", ctx.settings.max_dataset_bytes)
    ctx.records.add_upload_bytes("datasets", stored.size)
    existing = ctx.records.get_artifact(t.name, "datasets", stored.digest)
    if existing:
        return existing, 200
    try:
        facts = inspect_dataset(ctx.store.local_path("datasets", stored.digest), ctx.settings.max_dataset_bytes)
    except Exception:
        if stored.created:
            ctx.store.discard("datasets", stored.digest)
        raise
    record = {"id": stored.digest, "name": name or filename or "dataset.npz", "size": stored.size, **facts,
              "created_at": iso(now())}
    created = ctx.records.put_artifact(t.name, "datasets", record)
    return (record, 201) if created else (ctx.records.get_artifact(t.name, "datasets", stored.digest), 200)


@blp.route("/<string:dataset_id>", methods=["GET"])
@blp.response(200, DatasetSchema)
def get_dataset(dataset_id):
    """A dataset record of this tenant."""
    record = services().records.get_artifact(tenant().name, "datasets", dataset_id)
    if record is None:
        raise ApiProblem(404, "not_found", f"no dataset {dataset_id}")
    return record
