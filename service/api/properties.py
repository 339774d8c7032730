"""VNN-LIB properties as uploads: POST, GET, list and DELETE /v1/properties. A file is parsed at upload (so a job
that names it by id cannot fail on its syntax); a job then gives ``properties: [{name, property_id}]`` instead of
the text, and the worker reads the bytes from the store."""

from __future__ import annotations

from flask import url_for
from flask_smorest import Blueprint
from marshmallow import RAISE

from certify.errors import ModelRejected
from service.api.common import store_upload, tenant_artifact
from service.api.models import _BODY
from service.context import require_write, services, tenant
from service.problems import ApiProblem
from service.schemas import PageQuerySchema, PropertyPageSchema, PropertySchema, UploadQuerySchema

blp = Blueprint("properties", __name__, url_prefix="/v1/properties", description="VNN-LIB properties")


def describe_property(path: str, max_bytes: int) -> dict:
    """The parsed file's sizes; a malformed or unsupported file is 422 ``invalid_vnnlib`` naming the file part."""
    from certify.vnnlib import read_vnnlib

    try:
        prop = read_vnnlib(path)
    except ModelRejected as e:
        raise ApiProblem(422, e.code, e.message, errors={"file": [e.message]}) from None
    return {"inputs": prop.n_inputs, "outputs": prop.n_outputs, "cases": len(prop.cases)}


@blp.route("", methods=["POST"])
@blp.arguments(UploadQuerySchema(), location="query", as_kwargs=True, unknown=RAISE)
@blp.doc(requestBody=_BODY)
@blp.response(201, PropertySchema)
@blp.alt_response(200, schema=PropertySchema, description="the same bytes were uploaded before")
def upload_property(name=None):
    """Upload a .vnnlib file (raw body or multipart part 'file'); the id is sha256 of the bytes."""
    return store_upload("properties", services().settings.max_property_bytes, describe_property,
                        "property.vnnlib", name)


@blp.route("", methods=["GET"])
@blp.arguments(PageQuerySchema(), location="query", unknown=RAISE)
@blp.response(200, PropertyPageSchema)
def list_properties(query):
    """This tenant's properties, newest first; page with cursor."""
    items, next_offset = services().records.list_artifacts(tenant().name, "properties", query["cursor"],
                                                           query["limit"])
    nxt = url_for("properties.list_properties", cursor=next_offset, limit=query["limit"]) if next_offset else None
    return {"items": items, "next": nxt}


@blp.route("/<string:property_id>", methods=["GET"])
@blp.response(200, PropertySchema)
def get_property(property_id):
    """A property record of this tenant."""
    return tenant_artifact("properties", property_id, "property")


@blp.route("/<string:property_id>", methods=["DELETE"])
@blp.response(204)
def delete_property(property_id):
    """Forget a property: new jobs cannot name it; jobs already queued still run it."""
    t = require_write()
    if not services().records.delete_artifact(t.name, "properties", property_id):
        raise ApiProblem(404, "not_found", f"no property {property_id}")
    return ""
