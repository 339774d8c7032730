"""The predicate's JSON Schema (``predicate.schema.json``, published as ``docs/report-schema.json`` by
``make schema-docs``; a test keeps the two equal), its checks, and what is derived from it.

Errors are short lines naming the field (``predicate.bounds.layers[2].upper: ...``). Where a section may be either
``{"status": "skipped", ...}`` or the real section, the errors shown are those of the branch the section meant to be.
"""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime
from importlib import resources

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_FILE = "predicate.schema.json"


@functools.cache
def predicate_schema() -> dict:
    """The predicate schema, as shipped in this package."""
    schema = json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def fields(definition: str) -> list[str]:
    """The properties of one of the schema's ``$defs`` in the schema's order: the columns of a table of them, so a
    field added to the schema shows in ``lipcert show`` and the HTML report without another edit."""
    return list(predicate_schema()["$defs"][definition]["properties"])


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(predicate_schema())


def _path(parts) -> str:
    text = "predicate"
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else f".{p}"
    return text


def _is_skipped_branch(schema: dict) -> bool:
    return schema.get("$ref") == "#/$defs/skipped"


def _leaf_errors(error: ValidationError) -> list[ValidationError]:
    """Replace a failed ``oneOf`` by the errors of the alternative the instance was aiming at."""
    if error.validator != "oneOf" or not error.context:
        return [error]
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    alternatives = error.validator_value
    instance = error.instance
    if isinstance(instance, dict) and "status" in instance:
        wanted = [i for i, s in enumerate(alternatives) if _is_skipped_branch(s)]
    else:
        wanted = [i for i, s in enumerate(alternatives) if not _is_skipped_branch(s) and s != {"type": "null"}]
    chosen = [sub for i in wanted for sub in branches.get(i, [])]
    if not chosen:
        return [error]
    return [leaf for sub in chosen for leaf in _leaf_errors(sub)]


def _non_finite(value, parts=()) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_path(parts)}: {value} is not a finite number (JSON cannot carry it; use null and a reason)"]
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _non_finite(v, (*parts, k))]
    if isinstance(value, (list, tuple)):
        return [m for i, v in enumerate(value) for m in _non_finite(v, (*parts, i))]
    return []


def eps_key(eps: float) -> str:
    """How a radius keys the report's per-eps tables: the shortest text that reads back as the same float
    (``0.1`` -> ``"0.1"``)."""
    return repr(float(eps))


def eps_of(key) -> float | None:
    """The radius a per-eps table's key stands for; None for a key that is not a number."""
    try:
        return float(key)
    except (TypeError, ValueError):
        return None


def parse_created(text: str) -> datetime:
    """``created`` as an aware datetime (RFC 3339, UTC); ValueError when it is not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.utcoffset() is None:
        raise ValueError("no time zone")
    return moment


def validate_predicate(predicate) -> list[str]:
    """Every schema error of ``predicate`` as ``path: message`` lines; empty when it is valid."""
    messages = []
    for error in _validator().iter_errors(predicate):
        for leaf in _leaf_errors(error):
            messages.append(f"{_path(leaf.absolute_path)}: {leaf.message}")
    messages.extend(_non_finite(predicate))
    if isinstance(predicate, dict) and isinstance(predicate.get("created"), str):
        try:
            parse_created(predicate["created"])
        except ValueError as e:
            messages.append(f"predicate.created: not an RFC 3339 time ({e})")
    return sorted(set(messages))
