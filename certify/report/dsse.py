"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse, "envelope.md" and "protocol.md").

A signature covers the pre-authentication encoding (PAE) of the payload type and the payload bytes, so changing
either one invalidates it. Decoding is strict, so that any changed byte of a stored envelope fails: the envelope
must be exactly ``{"payloadType", "payload", "signatures": [{"keyid", "sig"}, ...]}``, base64 must be standard,
padded and canonical (re-encoding the decoded bytes gives the same text), and JSON objects may not repeat a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping

from certify.errors import CodedError
from certify.report.keys import TrustedKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"

MAX_ENVELOPE_BYTES = 32 * 1024 * 1024


class VerificationError(CodedError):
    """A report that must not be trusted; ``code`` is stable and machine-readable, ``message`` is for people."""


def shown(value, limit: int = 100) -> str:
    """A value from an untrusted document, quoted and cut short, safe to put in a message or a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 pre-authentication encoding: ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``.

    LEN is the byte length as ASCII decimal without leading zeros; the type is UTF-8 encoded.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def canonical_json(document) -> bytes:
    """The bytes a statement is signed as: sorted keys, no whitespace, UTF-8, finite numbers only."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text, what: str) -> bytes:
    """Strict standard padded base64 that must round-trip exactly."""
    if not isinstance(text, str):
        raise VerificationError("malformed_envelope", f"{what} must be a base64 string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise VerificationError("bad_encoding", f"{what} is not standard padded base64") from None
    if _b64encode(data) != text:
        raise VerificationError("bad_encoding", f"{what} is not canonical base64")
    return data


def sign_payload(payload_type: str, payload: bytes, signers) -> dict:
    """An envelope carrying ``payload`` signed by each of ``signers`` (one signer or a list)."""
    if not isinstance(signers, (list, tuple)):
        signers = [signers]
    if not signers:
        raise ValueError("at least one signer is needed")
    message = pae(payload_type, payload)
    return {
        "payloadType": payload_type,
        "payload": _b64encode(payload),
        "signatures": [{"keyid": s.keyid, "sig": _b64encode(s.sign(message))} for s in signers],
    }


def sign_statement(statement: dict, signer) -> dict:
    """Sign an in-toto statement: the envelope holds its canonical JSON (see :func:`canonical_json`)."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"not an in-toto Statement v1 (_type {statement.get('_type')!r})")
    return sign_payload(PAYLOAD_TYPE, canonical_json(statement), signer)


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes, what: str) -> object:
    """Strict JSON: UTF-8, no repeated keys, no NaN/Infinity; a document cut short is reported as truncated."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VerificationError("malformed_json", f"{what} is not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        if not text.strip():
            raise VerificationError("truncated", f"{what} is empty") from None
        if e.pos >= len(text.rstrip()) or "Unterminated string" in e.msg:
            detail = f"{e.msg}: character {e.pos} of {len(text)}"
            raise VerificationError("truncated", f"{what} ends early ({detail})") from None
        raise VerificationError("malformed_json", f"{what} is not valid JSON ({e.msg}: character {e.pos})") from None
    except (ValueError, RecursionError) as e:
        raise VerificationError("malformed_json", f"{what} is not valid JSON: {e}") from None


def dump_envelope(envelope: dict) -> bytes:
    """The stored form of an envelope: compact JSON without a trailing newline, so that every byte of the file is
    significant and a file cut short anywhere no longer parses."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=True).encode()


def read_json_file(source) -> object:
    """Strict JSON from a file path or bytes; unreadable, oversized or truncated input -> VerificationError."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        what = "report"
    else:
        what = f"report {os.fspath(source)}"
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_ENVELOPE_BYTES + 1)
        except OSError as e:
            raise VerificationError("unreadable", f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > MAX_ENVELOPE_BYTES:
        raise VerificationError("too_large", f"{what} is over {MAX_ENVELOPE_BYTES} bytes")
    return parse_json(data, what)


def read_envelope(source) -> dict:
    """An envelope from a file path or its bytes, its shape checked (signatures are not: see open_envelope)."""
    envelope = read_json_file(source)
    check_envelope_shape(envelope)
    return envelope


def check_envelope_shape(envelope) -> None:
    """Exactly the DSSE envelope fields, with the right types; nothing else."""
    if not isinstance(envelope, dict):
        raise VerificationError("malformed_envelope", "a DSSE envelope is a JSON object")
    fields = set(envelope)
    if fields != {"payloadType", "payload", "signatures"}:
        missing = sorted({"payloadType", "payload", "signatures"} - fields)
        extra = sorted(fields - {"payloadType", "payload", "signatures"})
        detail = "; ".join(p for p in (missing and f"missing {missing}", extra and f"unexpected {extra}") if p)
        raise VerificationError("malformed_envelope", f"not a DSSE envelope: {detail}")
    if not isinstance(envelope["payloadType"], str):
        raise VerificationError("malformed_envelope", "payloadType must be a string")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise VerificationError("unsigned", "the envelope carries no signatures")
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise VerificationError("malformed_envelope", f"signatures[{i}] must be exactly {{keyid, sig}}")
        if not isinstance(entry["keyid"], str) or not isinstance(entry["sig"], str):
            raise VerificationError("malformed_envelope", f"signatures[{i}]: keyid and sig must be strings")


def verify_signatures(envelope: dict, trusted_keys) -> tuple[bytes, str]:
    """(payload bytes, key id) when a signature over the PAE verifies under a trusted key; else VerificationError.

    Signatures are matched to keys by key id; signatures from keys not trusted are ignored.
    """
    check_envelope_shape(envelope)
    if isinstance(trusted_keys, TrustedKey):
        trusted_keys = [trusted_keys]
    elif isinstance(trusted_keys, Mapping):
        trusted_keys = trusted_keys.values()
    by_id = {k.keyid: k for k in trusted_keys}
    if not by_id:
        raise VerificationError("no_trusted_keys", "no trusted public key was given")
    payload = _b64decode(envelope["payload"], "payload")
    message = pae(envelope["payloadType"], payload)
    matched = []
    for i, entry in enumerate(envelope["signatures"]):
        sig = _b64decode(entry["sig"], f"signatures[{i}].sig")
        key = by_id.get(entry["keyid"])
        if key is None:
            continue
        if key.verify(sig, message):
            return payload, key.keyid
        matched.append(entry["keyid"])
    if matched:
        raise VerificationError("bad_signature", f"the signature by key {matched[0]} does not match the payload")
    named = ", ".join(shown(e["keyid"]) for e in envelope["signatures"][:3])
    raise VerificationError("unknown_key", f"signed by key {named}, which is not among the trusted keys")


def decode_statement(payload_type: str, payload: bytes) -> dict:
    """The in-toto statement inside a payload, after checking the payload type and the statement type."""
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError("wrong_payload_type",
                                f"payloadType is {shown(payload_type)}, expected {PAYLOAD_TYPE!r}")
    statement = parse_json(payload, "payload")
    if not isinstance(statement, dict):
        raise VerificationError("malformed_statement", "the payload is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError("wrong_statement_type",
                                f"_type is {shown(statement.get('_type'))}, expected {STATEMENT_TYPE!r}")
    return statement


def open_envelope(envelope: dict, trusted_keys) -> tuple[dict, str]:
    """(statement, key id): the signature by a trusted key first, then payloadType and ``_type``."""
    payload, keyid = verify_signatures(envelope, trusted_keys)
    return decode_statement(envelope["payloadType"], payload), keyid


def peek_statement(envelope: dict) -> dict:
    """The statement inside an envelope WITHOUT checking any signature (for display only, never for decisions)."""
    check_envelope_shape(envelope)
    return decode_statement(envelope["payloadType"], _b64decode(envelope["payload"], "payload"))
