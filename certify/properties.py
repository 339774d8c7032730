"""VNN-LIB properties as part of a certification job: each property is decided on the job's model within a time
budget, and its verdict (holds, violated with a counterexample confirmed in onnxruntime, or unknown) goes into the
signed report, where the gate's policy can require every property to hold.

Properties are stated over the inputs and outputs of the model as uploaded (the VNN-LIB convention), not over the
raw units of a preprocessing lipcert prepends for eps.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from certify.errors import ModelRejected
from certify.vnnlib import Property, check_sizes, parse_vnnlib

MAX_PROPERTIES = 64


@dataclass(frozen=True)
class PropertySpec:
    """One property of a job: its name, its VNN-LIB text (kept so the report can name its hash) and the parse."""

    name: str
    sha256: str
    parsed: Property


@dataclass(frozen=True)
class PropertyResult:
    """What the report records of one property."""

    name: str
    sha256: str
    result: str  # holds | violated | unknown
    method: str
    seconds: float
    reason: str = ""
    counterexample: dict | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "sha256": self.sha256, "result": self.result, "method": self.method,
               "seconds": round(self.seconds, 3), "reason": self.reason}
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample
        return out


def _check_entries(entries: list[dict]) -> None:
    if len(entries) > MAX_PROPERTIES:
        raise ModelRejected("invalid_config", f"properties: at most {MAX_PROPERTIES} properties per job")
    seen = set()
    for i, entry in enumerate(entries):
        if entry["name"] in seen:
            raise ModelRejected("invalid_config", f"properties[{i}].name: {entry['name']!r} is given twice")
        seen.add(entry["name"])


def _parse(i: int, entry: dict) -> PropertySpec:
    name, text = entry["name"], entry["vnnlib"]
    try:
        parsed = parse_vnnlib(text)
    except ModelRejected as e:
        raise ModelRejected(e.code, f"properties[{i}] ({name}): {e.message}") from None
    return PropertySpec(name, hashlib.sha256(text.encode()).hexdigest(), parsed)


def parse_specs(entries: list[dict]) -> list[PropertySpec]:
    """Check a job's ``properties`` (``[{name, vnnlib}]``): unique names, each text a supported VNN-LIB file.
    A bad entry is refused with ``invalid_vnnlib`` naming ``properties[i]``."""
    _check_entries(entries)
    return [_parse(i, entry) for i, entry in enumerate(entries)]


def check_entries(entries: list[dict]) -> None:
    """:func:`parse_specs` for a job request, where an entry may name an uploaded property (``property_id``)
    instead of carrying its text: such a file was parsed at upload, and the worker reads it from the store."""
    _check_entries(entries)
    for i, entry in enumerate(entries):
        if "vnnlib" in entry:
            _parse(i, entry)


def _size(shape) -> int | None:
    """Elements per sample of a declared (batch-first) shape; None when a dimension is dynamic."""
    dims = list(shape or [])[1:]
    return math.prod(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None


def check_declared_fit(n_inputs: int, n_outputs: int, inputs: list[dict], outputs: list[dict]) -> None:
    """What :meth:`certify.decide.Decider.check_fits` refuses, told from the model's declared inputs and outputs
    (``[{name, shape}]``) without loading it, for a property of ``n_inputs`` X and ``n_outputs`` Y variables: one
    input, and as many variables as the model has elements per sample (a dynamic dimension is left to the worker).
    ``property_mismatch`` otherwise."""
    if len(inputs) != 1:
        raise ModelRejected("property_mismatch", f"the model has {len(inputs)} inputs; VNN-LIB properties need one")
    check_sizes(n_inputs, n_outputs, _size(inputs[0].get("shape")),
                _size(outputs[0].get("shape")) if len(outputs) == 1 else None)


def decide_properties(model_path, specs: list[PropertySpec], timeout_s: float, *, seed: int = 0,
                      deadline: float | None = None,
                      on_property: Callable[[int, int], None] | None = None) -> list[PropertyResult]:
    """Decide each property within ``timeout_s`` (and before ``deadline``, a ``time.monotonic`` value, when given:
    a property that gets no time left is ``unknown``). The model is loaded, converted and given its bound engine
    once, for every property; a property whose sizes do not fit the model is refused."""
    from certify.decide import load_decider

    results, decider = [], None
    for k, spec in enumerate(specs):
        budget = timeout_s if deadline is None else min(timeout_s, deadline - time.monotonic())
        if budget <= 0:
            results.append(PropertyResult(spec.name, spec.sha256, "unknown", "none", 0.0,
                                          reason="the job's time budget ran out before this property"))
        else:
            try:
                if decider is None:
                    decider = load_decider(model_path, spec.parsed, seed=seed)
                decider.check_fits(spec.parsed)
            except ModelRejected as e:
                raise ModelRejected(e.code, f"property {spec.name}: {e.message}") from None
            verdict = decider.decide(spec.parsed, budget).to_dict()
            results.append(PropertyResult(spec.name, spec.sha256, verdict["result"], verdict["method"],
                                          verdict["seconds"], verdict["reason"], verdict.get("counterexample")))
        if on_property is not None:
            on_property(k + 1, len(specs))
    return results
