"""The in-toto Statement v1 that carries a robustness report about one model file.

The subject is the model file, named and identified by the SHA-256 of its exact bytes; the predicate is the report
(schema: ``predicate.schema.json``). See https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md.
"""

from __future__ import annotations

import hashlib
import platform
import re
import struct
from datetime import UTC, datetime
from importlib import metadata

from certify.report.dsse import STATEMENT_TYPE
from certify.report.schema import validate_predicate

PREDICATE_TYPE = "https://lipcert.dev/robustness-report/v1"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["PREDICATE_TYPE", "STATEMENT_TYPE", "build_statement", "environment", "skipped", "utc_now",
           "validate_predicate", "weights_sha256"]


def skipped(reason: str) -> dict:
    """How a section of a stage that did not run is recorded."""
    if not reason:
        raise ValueError("a skipped stage needs a reason")
    return {"status": "skipped", "reason": reason}


def utc_now() -> str:
    """The current time as RFC 3339 UTC with seconds, e.g. ``2026-11-25T14:53:14Z`` (for ``created``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(*, device: str, seed: int | None) -> dict:
    """The ``environment`` section: package versions (read from their metadata, without importing them)."""
    return {
        "lipcert": _version("lipcert"),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "python": platform.python_version(),
        "device": device,
        "seed": seed,
    }


def weights_sha256(named_tensors) -> str:
    """A digest of converted weights, for ``converter.weights_sha256``.

    ``named_tensors`` is an iterable of (name, array) with numpy arrays or torch tensors (e.g. a module's
    ``state_dict().items()``). The digest runs over the entries sorted by name; each contributes its name, dtype
    and shape as length-prefixed UTF-8 text, then its C-contiguous little-endian bytes, length-prefixed: the same
    weights give the same digest whatever order they were produced in, and no two different sets collide by
    concatenation.
    """
    import numpy as np

    digest = hashlib.sha256()

    def put(chunk: bytes) -> None:
        digest.update(struct.pack("<Q", len(chunk)))
        digest.update(chunk)

    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().cpu().numpy()
        array = np.ascontiguousarray(tensor)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        put(name.encode())
        put(f"{array.dtype.str}{list(array.shape)}".encode())
        put(array.tobytes())
    return digest.hexdigest()


def build_statement(*, model_name: str, model_sha256: str, predicate: dict) -> dict:
    """An in-toto Statement v1 about the model file; ValueError listing every problem if the predicate is invalid.

    Refusing here, before signing, keeps the service from issuing a signed report that no verifier would accept.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be a non-empty string")
    if not isinstance(model_sha256, str) or not _SHA256.match(model_sha256):
        raise ValueError("model_sha256 must be 64 lowercase hex digits")
    errors = validate_predicate(predicate)
    if errors:
        raise ValueError("invalid report predicate:\n  " + "\n  ".join(errors))
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": model_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
