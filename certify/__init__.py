"""lipcert's library: safe ONNX loading, conversion to PyTorch, Lipschitz certificates, attacks, reports."""

from certify.convert import CONVERTER_VERSION, OnnxGraph, to_torch
from certify.errors import ModelRejected
from certify.load import DEFAULT_LIMITS, Limits, load_onnx
from certify.verify import verify_conversion

__version__ = "0.1.0"

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_LIMITS",
    "Limits",
    "ModelRejected",
    "OnnxGraph",
    "__version__",
    "load_onnx",
    "to_torch",
    "verify_conversion",
]
