"""Random ONNX instances of one operator, for the soundness harness (``certify.lipschitz.soundness``).

Every registered operator class declares ``example(op_type, rng) -> Example`` beside its conversion: a small model
``x -> ... -> op -> y`` over the operator's attribute space as the ONNX spec allows it (negative, zero and large
attributes, every broadcasting pattern, operands that are constants or functions of the same ``x``, edge shapes).
This module holds what those generators share: a graph builder and the common draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Opset of the instances unless an operator needs another one.
OPSET = 18


@dataclass
class Example:
    """One instance: the model (input ``x`` with a batch of 1, output ``y``) and its family, a short label of the
    attribute region it was drawn from (the harness reports and tracks failures per family)."""

    model: onnx.ModelProto
    family: str

    @property
    def input_shape(self) -> tuple:
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        return tuple(d.dim_value for d in dims[1:])


def real(rng: np.random.Generator) -> float:
    """A float attribute anywhere ONNX allows it: zero, tiny, ordinary, large, either sign."""
    magnitude = float(rng.choice([0.0, 1e-3, 0.5, 1.0, 2.0, 30.0, 1e3]))
    return float(np.float32(magnitude * rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0])))


def values(rng: np.random.Generator, shape) -> np.ndarray:
    """A float32 constant at a random scale, sometimes with zeros."""
    out = rng.standard_normal(shape) * float(rng.choice([1e-3, 0.3, 1.0, 10.0, 1e3]))
    if rng.random() < 0.2:
        out = out * (rng.random(shape) < 0.5)
    return out.astype(np.float32)


def shape(rng: np.random.Generator, rank: tuple[int, int] = (1, 3), size: int = 4) -> tuple:
    """A per-sample shape (edge sizes of 1 included)."""
    return tuple(int(d) for d in rng.integers(1, size + 1, size=int(rng.integers(rank[0], rank[1] + 1))))


def broadcastable(rng: np.random.Generator, full: tuple) -> tuple:
    """A shape that broadcasts to ``full``: random axes set to 1, random leading axes dropped."""
    out = tuple(1 if rng.random() < 0.4 else d for d in full)
    return out[int(rng.integers(0, len(out) + 1)):] if rng.random() < 0.3 else out


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


class Graph:
    """Builds ``x -> nodes -> y``; ``x`` is float32 with shape ``(1, *per_sample)``."""

    def __init__(self, rng: np.random.Generator, per_sample: tuple, opset: int = OPSET):
        self.rng, self.opset = rng, opset
        self.x_shape = (1, *per_sample)
        self.nodes: list = []
        self.initializers: list = []
        self.shapes: dict = {"x": self.x_shape}

    def name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.initializers)}"

    def const(self, array, dtype=np.float32) -> str:
        name = self.name("c")
        array = np.asarray(array, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.shapes[name] = array.shape
        return name

    def ints(self, items) -> str:
        return self.const(np.asarray(items, dtype=np.int64), np.int64)

    def node(self, op_type: str, inputs, outputs: int = 1, **attrs):
        names = [self.name("t") + f"_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=f"n{len(self.nodes)}", **attrs))
        return names[0] if outputs == 1 else names

    def derived(self, target: tuple) -> str:
        """A function of ``x`` with the full shape ``target`` (batch included): some elementwise map of x,
        reduced (max / mean / min) on the axes where the sizes differ, then expanded to ``target``."""
        rng = self.rng
        t = pick(rng, ["x", "neg", "relu", "tanh"])
        name = "x" if t == "x" else self.node({"neg": "Neg", "relu": "Relu", "tanh": "Tanh"}[t], ["x"])
        target = (1,) * (len(self.x_shape) - len(target)) + tuple(target)
        if len(target) > len(self.x_shape):
            name = self.node("Unsqueeze", [name, self.ints(range(len(target) - len(self.x_shape)))])
            current = (1,) * (len(target) - len(self.x_shape)) + self.x_shape
        else:
            current = self.x_shape
        axes = [i for i, (c, t2) in enumerate(zip(current, target)) if t2 != c and c != 1]
        if axes:
            name = self.node(pick(rng, ["ReduceMax", "ReduceMean", "ReduceMin"]), [name, self.ints(axes)], keepdims=1)
            current = tuple(1 if i in axes else c for i, c in enumerate(current))
        if current != target:
            name = self.node("Expand", [name, self.ints(target)])
        return name

    def operand(self, target: tuple, allow_varying: bool = True) -> tuple[str, str]:
        """A second operand of shape ``target`` (batch included or not): x itself when the shapes agree, a
        constant, or a function of x. Returns (name, kind)."""
        rng = self.rng
        if allow_varying and tuple(target) == self.x_shape and rng.random() < 0.2:
            return "x", "x"
        if allow_varying and rng.random() < 0.4:
            return self.derived(target), "varying"
        return self.const(values(rng, target)), "const"

    def model(self, output: str, same_as_x: bool = False) -> onnx.ModelProto:
        """The model; the output's type and shape are x's (``same_as_x``) or come from onnx's shape inference."""
        graph = helper.make_graph(
            self.nodes, "instance", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.x_shape))],
            [helper.make_tensor_value_info(output, TensorProto.UNDEFINED, None)], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        if same_as_x:
            model.graph.output[0].CopyFrom(helper.make_tensor_value_info(output, TensorProto.FLOAT, self.x_shape))
            return model
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph.output[0]
            if not inferred.type.tensor_type.HasField("shape"):  # a function op onnx does not infer: run it
                from onnx.reference import ReferenceEvaluator

                (y,) = ReferenceEvaluator(model).run(None, {"x": np.zeros(self.x_shape, np.float32)})
                inferred = helper.make_tensor_value_info(output, helper.np_dtype_to_tensor_dtype(y.dtype), y.shape)
            model.graph.output[0].CopyFrom(inferred)
        except Exception:  # noqa: BLE001  (an invalid instance: the loader refuses it with its own code)
            pass
        return model


def unary(op_type: str, rng: np.random.Generator, family: str = "", opset: int = OPSET, per_sample=None,
          **attrs) -> Example:
    """``op(x, **attrs)`` on ``per_sample`` (default: a random shape)."""
    g = Graph(rng, shape(rng) if per_sample is None else per_sample, opset)
    return Example(g.model(g.node(op_type, ["x"], **attrs)), family or "default")


def attribute_family(attrs: dict) -> str:
    """The sign pattern of float attributes (``alpha<0,gamma=0``): where rules usually break."""
    parts = [f"{k}{'<0' if v < 0 else ('=0' if v == 0 else '>0')}" for k, v in sorted(attrs.items())
             if isinstance(v, float)]
    return ",".join(parts) or "default"


def broadcast_operands(rng: np.random.Generator, count: int, op_type: str, opset: int = OPSET, **attrs) -> Example:
    """``op(a_1, ..., a_count)`` where x is one operand and the others are constants or functions of x, every
    operand broadcast on random axes (x itself may be the small one)."""
    full = (1, *shape(rng))
    x_shape = broadcastable(rng, full)
    x_shape = (1,) * (len(full) - len(x_shape)) + x_shape
    g = Graph(rng, x_shape[1:], opset)
    operands = [("x", "x", x_shape)]
    for _ in range(count - 1):
        target = broadcastable(rng, full)
        operands.append((*g.operand(target), target))
    operands = [operands[i] for i in rng.permutation(count)]
    varying = sum(kind != "const" for _, kind, _ in operands)
    broadcast = any(math.prod(s) < math.prod(full) for _, kind, s in operands if kind != "const")
    family = f"{varying} varying of {count}" + (", varying broadcast" if broadcast and varying > 1 else "")
    return Example(g.model(g.node(op_type, [n for n, _, _ in operands], **attrs)), family)


def window(rng: np.random.Generator, spatial: tuple, kernel: tuple, pads_below_kernel: bool = False,
           dilations: bool = True) -> dict:
    """Sliding-window attributes over ``spatial``: strides, dilations, explicit pads (kernels larger than the
    map padded up to fit) or an ``auto_pad`` mode."""
    nd = len(spatial)
    attrs: dict = {"strides": [int(rng.integers(1, 4)) for _ in range(nd)]}
    dil = [int(rng.integers(1, 3)) if dilations else 1 for _ in range(nd)]
    if dilations:
        attrs["dilations"] = dil
    if rng.random() < 0.25:
        attrs["auto_pad"] = pick(rng, ["SAME_UPPER", "SAME_LOWER", "VALID"])
        if attrs["auto_pad"] == "VALID":
            attrs["dilations"] = [1] * nd if dilations else None
            if any(k > s for k, s in zip(kernel, spatial)):
                attrs["auto_pad"] = "SAME_UPPER"
        return {k: v for k, v in attrs.items() if v is not None}
    begin, end = [], []
    for s, k, d in zip(spatial, kernel, dil):
        limit = k - 1 if pads_below_kernel else k + 1
        b, e = int(rng.integers(0, limit + 1)), int(rng.integers(0, limit + 1))
        while s + b + e < d * (k - 1) + 1:
            b, e = b + 1, e + 1
        begin.append(b), end.append(e)
    attrs["pads"] = begin + end
    if pads_below_kernel and any(p >= k for p, k in zip(begin + end, list(kernel) * 2)):
        attrs.pop("pads")
        attrs["auto_pad"] = "SAME_UPPER"
    return attrs


def spatial_input(rng: np.random.Generator, channels: int) -> tuple:
    """(channels, *spatial) with 1 or 2 spatial axes, 1x1 maps included."""
    return (channels, *(int(d) for d in rng.integers(1, 6, size=int(rng.integers(1, 3)))))


def normalization(g: Graph, op_type: str, param_shapes, **attrs) -> Example:  # output shaped as x
    """A normalisation of x with constant parameters of ``param_shapes`` (scale, bias) and an epsilon anywhere
    from zero up."""
    epsilon = float(pick(g.rng, [1e-5, 1e-2, 1.0, 0.0]))
    params = [g.const(values(g.rng, shape)) for shape in param_shapes]
    out = g.node(op_type, ["x", *params], epsilon=epsilon, **attrs)
    return Example(g.model(out, same_as_x=True), f"epsilon {epsilon:g}")
