"""lipcert's library: safe ONNX loading, conversion to PyTorch, Lipschitz certificates, attacks, reports.

The public names are imported lazily, so light commands (``lipcert verify``, ``lipcert gate``) do not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CONVERTER_VERSION": "certify.convert",
    "OnnxGraph": "certify.convert",
    "to_torch": "certify.convert",
    "ModelRejected": "certify.errors",
    "DEFAULT_LIMITS": "certify.load",
    "Limits": "certify.load",
    "load_onnx": "certify.load",
    "verify_conversion": "certify.verify",
    "run_pipeline": "certify.pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
