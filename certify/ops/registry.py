"""Which ONNX operators we convert, and for which operator versions.

Each operator class declares a range of accepted ``since_version`` values of its schema rather than one exact
version, so a model at a newer opset whose operator schema did not change keeps converting.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

_REGISTRY: dict[str, type] = {}


@dataclass(frozen=True)
class Support:
    op_type: str
    min_version: int
    max_version: int | None  # None: up to the newest schema the installed onnx knows


def register(*op_types: str, versions: tuple[int, int | None] = (1, None)):
    """Class decorator: ``@register("Relu", versions=(6, None))``."""

    def decorate(cls):
        for op_type in op_types:
            if op_type in _REGISTRY:
                raise RuntimeError(f"operator {op_type} registered twice")
            _REGISTRY[op_type] = cls
        cls.versions = versions
        return cls

    return decorate


def schema_version(op_type: str, opset: int) -> int | None:
    """The ``since_version`` of the schema that a default-domain model at ``opset`` uses for ``op_type``."""
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except onnx.defs.SchemaError:
        return None


def lookup(op_type: str, opset: int):
    """The class converting ``op_type`` at ``opset``, or None when unsupported."""
    cls = _REGISTRY.get(op_type)
    if cls is None:
        return None
    version = schema_version(op_type, opset)
    if version is None:
        return None
    lo, hi = cls.versions
    if version < lo or (hi is not None and version > hi):
        return None
    return cls


def classes() -> dict[str, type]:
    """Every registered operator type and its class."""
    return dict(_REGISTRY)


def supported() -> list[Support]:
    return [Support(t, c.versions[0], c.versions[1]) for t, c in sorted(_REGISTRY.items())]
