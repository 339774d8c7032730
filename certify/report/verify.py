"""Verifying a signed report, deny-by-default, in the documented order.

1. a signature over the DSSE PAE by a trusted key (any of several: key rotation),
2. ``payloadType`` is in-toto JSON and ``_type`` is Statement v1,
3. the statement has a subject whose sha256 is that of the exact model bytes being deployed (when a model is given),
4. ``predicateType`` is ours and the predicate satisfies the schema.

Policy thresholds and freshness come after, in :mod:`certify.report.policy`. Each failure is a
:class:`VerificationError` with a stable code.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from certify.report.dsse import VerificationError, open_envelope, read_envelope, shown
from certify.report.schema import validate_predicate
from certify.report.statement import PREDICATE_TYPE

__all__ = ["VerificationError", "VerifiedReport", "file_sha256", "statement_subjects", "verify_report"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHOWN_SCHEMA_ERRORS = 5


@dataclass(frozen=True)
class VerifiedReport:
    statement: dict
    keyid: str  # the trusted key whose signature verified
    subject: dict  # {"name", "sha256"}: the subject matched to the model, or the first one when no model was given
    model_checked: bool  # whether the subject digest was compared with a model file

    @property
    def predicate(self) -> dict:
        return self.statement["predicate"]


def file_sha256(source) -> str:
    """Hex SHA-256 of a file's exact bytes (path) or of bytes."""
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def statement_subjects(statement: dict) -> list[dict]:
    """[{name, sha256}] of a statement's subjects, after checking their shape."""
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise VerificationError("malformed_statement", "the statement has no subject")
    out = []
    for i, s in enumerate(subjects):
        digest = s.get("digest") if isinstance(s, dict) else None
        sha = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(s.get("name") if isinstance(s, dict) else None, str) or not (
            isinstance(sha, str) and _SHA256.match(sha)
        ):
            raise VerificationError("malformed_statement", f"subject[{i}] needs a name and a sha256 digest")
        out.append({"name": s["name"], "sha256": sha})
    return out


def verify_report(report, trusted_keys, *, model=None, model_sha256: str | None = None) -> VerifiedReport:
    """Check ``report`` (envelope dict, file path or bytes) against ``trusted_keys``; VerificationError otherwise.

    ``model`` (a path or the model's bytes) or ``model_sha256`` binds the report to the model being deployed; with
    neither, the subject is not checked (``model_checked`` is False).
    """
    envelope = read_envelope(report) if isinstance(report, (str, bytes, bytearray, os.PathLike)) else report
    statement, keyid = open_envelope(envelope, trusted_keys)
    subjects = statement_subjects(statement)
    if model is not None:
        try:
            model_sha256 = file_sha256(model)
        except OSError as e:
            name = os.fspath(model)
            raise VerificationError("model_unreadable", f"cannot read model {name}: {e.strerror or e}") from None
    subject = subjects[0]
    if model_sha256 is not None:
        matching = [s for s in subjects if s["sha256"] == model_sha256]
        if not matching:
            raise VerificationError(
                "subject_mismatch",
                f"the report is about {shown(subject['name'])} (sha256 {subject['sha256']}), not this model "
                f"(sha256 {model_sha256})",
            )
        subject = matching[0]
    if statement.get("predicateType") != PREDICATE_TYPE:
        got = shown(statement.get("predicateType"))
        raise VerificationError("wrong_predicate_type", f"predicateType is {got}, expected {PREDICATE_TYPE!r}")
    errors = validate_predicate(statement.get("predicate"))
    if errors:
        more = f" (and {len(errors) - _SHOWN_SCHEMA_ERRORS} more)" if len(errors) > _SHOWN_SCHEMA_ERRORS else ""
        raise VerificationError("schema", "; ".join(errors[:_SHOWN_SCHEMA_ERRORS]) + more)
    return VerifiedReport(statement=statement, keyid=keyid, subject=subject, model_checked=model_sha256 is not None)
