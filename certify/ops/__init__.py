"""Operator families; importing this package registers every supported ONNX operator."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")
