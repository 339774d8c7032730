"""A model's summary: what a user sees first and what the report records."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from certify.load import opset_of, unsupported_operators


def _shape(vi: onnx.ValueInfoProto):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()


def summarize(model: onnx.ModelProto) -> dict:
    initializers = {t.name: t for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in initializers.values())
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.HasField("t"):
                    params += int(np.prod(a.t.dims))
    return {
        "opset": opset_of(model),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": vi.name, "shape": _shape(vi), "dtype": _dtype(vi)}
            for vi in model.graph.input
            if vi.name not in initializers
        ],
        "outputs": [{"name": vi.name, "shape": _shape(vi), "dtype": _dtype(vi)} for vi in model.graph.output],
        "operators": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "nodes": len(model.graph.node),
        "parameters": params,
        "unsupported_operators": dict(unsupported_operators(model)),
    }
