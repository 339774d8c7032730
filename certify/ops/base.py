"""The shape every converted operator has: a torch module built from one ONNX node.

A node's inputs arrive in ``forward`` as tensors in ONNX order (``None`` for an omitted optional input), so the
converted graph is an ordinary ``torch.nn.Module``. Inputs that ONNX makes attributes in one opset and inputs in
another (Clip, Pad, Squeeze, Split, Reduce*) are read from whichever the node has.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from certify.errors import ModelRejected

#: Largest tensor (in bytes) any operator may allocate; set per conversion from the load limits.
ALLOCATION_LIMIT = contextvars.ContextVar("lipcert_allocation_limit", default=4 * 1024**3)

_NP_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}

TORCH_OF_ONNX = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def check_allocation(shape, dtype: torch.dtype = torch.float32, what: str = "tensor") -> None:
    """Refuse, before allocating, a tensor larger than the allocation limit."""
    numel = 1
    for d in shape:
        d = int(d)
        if d < 0:
            raise ModelRejected("invalid_shape", f"{what} has a negative dimension {d}")
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    limit = ALLOCATION_LIMIT.get()
    if numel * itemsize > limit:
        raise ModelRejected(
            "allocation_too_large",
            f"{what} of shape {list(map(int, shape))} needs {numel * itemsize} bytes, over the limit of {limit}",
        )


def tensor_of_array(value: np.ndarray) -> torch.Tensor:
    """A numpy constant as a tensor; dtypes torch or lipcert cannot hold are refused."""
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise ModelRejected("unsupported_dtype", f"constant of dtype {value.dtype} is not supported")
    if value.dtype.kind == "u" and value.dtype != np.uint8:
        value = value.astype(np.int64)
    try:
        return torch.from_numpy(np.array(value, copy=True))
    except TypeError:  # a numpy extension dtype (bfloat16, 8-bit floats) torch cannot wrap
        raise ModelRejected("unsupported_dtype", f"constant of dtype {value.dtype} is not supported") from None


def dense_of_sparse(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense array (indices are either linear [NNZ] or coordinates [NNZ, rank])."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    check_allocation(dims, tensor_of_array(values).dtype, "sparse Constant")
    dense = np.zeros(int(np.prod(dims, dtype=np.int64)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    dense[indices] = values
    return dense.reshape(dims)


def ints(t: torch.Tensor | None) -> list[int] | None:
    """A 1-D integer tensor input (shape, axes, pads...) as a Python list."""
    if t is None:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


@dataclass
class NodeView:
    """What an operator needs to know about its ONNX node at conversion time."""

    name: str
    op_type: str
    opset: int
    attrs: dict
    inputs: list[str]
    outputs: list[str]
    constants: dict = field(default_factory=dict)  # input name -> np.ndarray for inputs known at conversion
    shapes: dict = field(default_factory=dict)  # tensor name -> tuple of ints/None from shape inference

    @classmethod
    def from_proto(cls, node: onnx.NodeProto, opset: int, constants: dict, shapes: dict) -> NodeView:
        attrs = {}
        for a in node.attribute:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            elif isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
            attrs[a.name] = value
        return cls(node.name, node.op_type, opset, attrs, list(node.input), list(node.output), constants, shapes)

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def const(self, index: int):
        """The constant value of input ``index`` (np.ndarray), or None if absent or computed at run time."""
        if index >= len(self.inputs) or not self.inputs[index]:
            return None
        return self.constants.get(self.inputs[index])

    def input_shape(self, index: int):
        if index >= len(self.inputs):
            return None
        return self.shapes.get(self.inputs[index])


def second_operand_is_own(self, index: int, value) -> bool:
    """``OnnxOp.own_first_axis`` of operators whose weight is operand 1 (its first axis: output channels, rows)."""
    return index == 1


class OnnxOp(nn.Module):
    """Base of every converted operator. Subclasses implement ``forward(*inputs)``.

    Everything lipcert knows about an operator is declared on its class, so adding one touches one file: its
    conversion and ``forward``, its instance generator (:meth:`example`, for the soundness harness), its global bound
    rule (:meth:`lipschitz`, in L2 and L-inf; a ``Pointwise`` activation declares only its slope range), its local
    relaxation (``relaxation``, ``certify.local.rules``) and the flags below. ``certify.lipschitz`` composes the
    rules and names no operator.

    ``foldable``: when all inputs are constants, the node is evaluated once at conversion time.
    """

    foldable = True
    versions: tuple[int, int | None] = (1, None)
    #: How the float forward pass rounds (``certify.lipschitz.rounding``): ``"exact"`` (copies and selections: the
    #: float result is the exact one), ``"nonnegative"`` (affine with nonnegative coefficients), ``"elementwise"``
    #: (one library call per entry) or None (a library function of the whole input).
    float_rounding: str | None = None
    #: Gated activations (``certify.lipschitz.gated``): ``gate_product``, the node multiplies its two inputs;
    #: ``gate_step``, a scalar elementwise op that may compute the gate ``g(x)`` of ``x * g(x)``.
    gate_product = False
    gate_step = False
    #: Fixed-batch analysis (``certify.lipschitz.batch``): the output depends on the input's shape only.
    shape_only = False

    def __init__(self, node: NodeView):
        super().__init__()
        self.onnx_name = node.name
        self.op_type = node.op_type

    @classmethod
    def from_node(cls, node: NodeView) -> OnnxOp:
        return cls(node)

    @classmethod
    def example(cls, op_type: str, rng):
        """A random instance of this operator (``certify.ops.examples.Example``) for the soundness harness; every
        registered operator declares one."""
        raise NotImplementedError(f"{op_type} declares no instance generator")

    def own_first_axis(self, index: int, value) -> bool:
        """Whether operand ``index`` (a constant ``value``) has a first axis of this operator's own (output channels,
        matrix rows), never broadcast over the batch (``certify.lipschitz.batch``). Default: no such operand."""
        return False

    def lipschitz(self, ctx):
        """This operator's Lipschitz bound rule (see ``certify.lipschitz``). Default: none, reported unbounded."""
        return None

    def promote_float32(self) -> None:
        """Make this operator's own float32 arithmetic float64 (the soundness harness's reference evaluation):
        nothing for most operators, whose precision follows their inputs."""

    def extra_repr(self) -> str:
        return f"onnx_name={self.onnx_name!r}"
