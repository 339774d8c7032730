"""Input preprocessing as real graph nodes, so eps is in the units the user thinks in (pixels) while the model still
sees the normalised inputs it was trained on.

``model input = (x * scale - mean) / std``, ``mean`` and ``std`` per channel (axis 1, channels first, or the last
axis with ``channel_axis: -1``) or one value for all. The nodes (Mul, Sub, Div by constants) are prepended to the
ONNX graph, and the new graph's input keeps the original name, in raw units. Because they are ordinary nodes, the
converter runs them and the Lipschitz bounds include them (a division by std multiplies the bound by 1/min std):
nothing downstream needs to know. The report records the spec and says which space eps is in.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from certify.errors import ModelRejected


def is_identity(spec: dict | None) -> bool:
    return spec is None or (spec["scale"] == 1.0 and not any(spec["mean"]) and all(s == 1.0 for s in spec["std"]))


def describe(spec: dict | None, input_range) -> dict:
    """The report's ``input`` section: the declared range, the preprocessing, and the space eps is measured in."""
    lo, hi = input_range
    if is_identity(spec):
        return {"range": [lo, hi], "preprocessing": None, "eps_space": "model_input",
                "description": f"eps is in the model's own input units; inputs lie in [{lo:g}, {hi:g}]"}
    return {"range": [lo, hi], "preprocessing": dict(spec), "eps_space": "raw_input",
            "description": f"eps is in raw input units (x in [{lo:g}, {hi:g}]), before the preprocessing lipcert "
                           "prepended to the model: model input = (x * scale - mean) / std"}


def _channel_shape(count: int, sample_shape: tuple[int, ...], what: str, axis: int) -> list[int]:
    """The broadcast shape (batch excluded) of a per-channel constant with ``count`` values on input ``axis``."""
    if count == 1:
        return []
    where = 0 if axis == 1 else len(sample_shape) - 1
    if sample_shape and sample_shape[where] == count:
        shape = [1] * len(sample_shape)
        shape[where] = count
        return shape
    hint = ""
    if axis == 1 and sample_shape and sample_shape[-1] == count:
        hint = "; the last axis has that many: for channels-last inputs give channel_axis -1 (--channels-last)"
    name = "axis 1" if axis == 1 else "the last axis"
    raise ModelRejected("invalid_config", f"preprocessing {what} has {count} values, but the model input "
                        f"{list(sample_shape)} has {sample_shape[where] if sample_shape else 'no'} channels ({name})"
                        f"{hint}; give one value or one per channel")


def _unique(model: onnx.ModelProto, base: str) -> str:
    taken = {n for node in model.graph.node for n in (*node.input, *node.output)}
    taken |= {t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:  # subgraphs (If, Loop, Scan) may read the outer input by name
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_uses(sub, old, new)


def prepend(model: onnx.ModelProto, spec: dict | None) -> onnx.ModelProto:
    """A copy of ``model`` whose single float input first goes through ``(x * scale - mean) / std``."""
    if is_identity(spec):
        return model
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ModelRejected("unsupported_model", f"preprocessing needs a model with one input, not {len(inputs)}")
    vi = inputs[0]
    elem = vi.type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        raise ModelRejected("unsupported_model", "preprocessing needs a floating-point model input")
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    sample_shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim[1:])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    raw = vi.name
    current = raw
    nodes, constants = [], []
    steps = (("Mul", "scale", [spec["scale"]]), ("Sub", "mean", spec["mean"]), ("Div", "std", spec["std"]))
    active = [(op, what, values) for op, what, values in steps
              if not (op == "Mul" and values == [1.0] or op == "Sub" and not any(values)
                      or op == "Div" and all(v == 1.0 for v in values))]
    normalised = _unique(out, f"{raw}__normalised")
    for k, (op, what, values) in enumerate(active):
        shape = _channel_shape(len(values), sample_shape, what, spec.get("channel_axis", 1))
        const = _unique(out, f"{raw}__{what}")
        constants.append(numpy_helper.from_array(np.asarray(values, dtype=dtype).reshape(shape), const))
        target = normalised if k == len(active) - 1 else _unique(out, f"{raw}__{what}_out")
        nodes.append(helper.make_node(op, [current, const], [target], name=f"preprocess/{what}"))
        current = target
    _rename_uses(graph, raw, normalised)
    if any(o.name == raw for o in graph.output):
        raise ModelRejected("unsupported_model", "the model returns its input unchanged; nothing to preprocess")
    graph.initializer.extend(constants)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    return out


def apply(model: onnx.ModelProto, spec: dict | None, input_shapes: dict | None = None) -> onnx.ModelProto:
    """``prepend`` then the loader's checks and shape inference again, on the composed graph."""
    if is_identity(spec):
        return model
    from certify.load import load_onnx

    return load_onnx(prepend(model, spec).SerializeToString(), input_shapes=input_shapes)
