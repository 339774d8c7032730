"""GET /v1/keys: the public keys that sign reports, with their key ids."""

from __future__ import annotations

from flask_smorest import Blueprint

from service.context import services
from service.schemas import KeyListSchema

blp = Blueprint("keys", __name__, url_prefix="/v1/keys", description="Report signing keys")


@blp.route("", methods=["GET"])
@blp.response(200, KeyListSchema)
def list_keys():
    """Verify reports against these (``lipcert verify --key``); the key id is sha256 of the DER public key."""
    return {"keys": [{"keyid": k.keyid, "kind": k.kind, "public_pem": k.pem} for k in services().public_keys]}
