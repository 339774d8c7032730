"""POST /v1/datasets and GET /v1/datasets/{id}: evaluation sets (.npz with x and y, no pickles)."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import RAISE

from service.api.common import store_upload, tenant_artifact
from service.api.models import _BODY
from service.context import services
from service.datasets import inspect_dataset
from service.schemas import DatasetSchema, UploadQuerySchema

blp = Blueprint("datasets", __name__, url_prefix="/v1/datasets", description="Evaluation datasets")


@blp.route("", methods=["POST"])
@blp.arguments(UploadQuerySchema(), location="query", as_kwargs=True, unknown=RAISE)
@blp.doc(requestBody=_BODY)
@blp.response(201, DatasetSchema)
@blp.alt_response(200, schema=DatasetSchema, description="the same bytes were uploaded before")
def upload_dataset(name=None):
    """Upload an .npz holding x (float, (N, ...)) and y (int labels, (N,))."""
    return store_upload("datasets", services().settings.max_dataset_bytes, inspect_dataset, "dataset.npz", name)


@blp.route("/<string:dataset_id>", methods=["GET"])
@blp.response(200, DatasetSchema)
def get_dataset(dataset_id):
    """A dataset record of this tenant."""
    return tenant_artifact("datasets", dataset_id, "dataset")
