"""Safe loading of untrusted ONNX bytes.

``onnx.checker`` alone is not a gate: it accepts unknown-domain operators, graph-less models and opset 999. This
module parses from bytes only (never following external-data paths), caps sizes before work is done, lists every
unsupported operator at once, and checks inferred tensor sizes before anything is allocated.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from certify.errors import ModelRejected
from certify.ops import registry

MIN_OPSET = 7
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Limits:
    """Caps applied to an uploaded model. Defaults suit one model per worker on a 24 GiB machine."""

    max_file_bytes: int = 2 * 1024**3
    max_nodes: int = 100_000
    max_initializer_bytes: int = 2 * 1024**3
    max_subgraph_depth: int = 3
    max_tensor_bytes: int = 4 * 1024**3


DEFAULT_LIMITS = Limits()


def _read_bytes(source, limits: Limits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_file_bytes:
            raise ModelRejected(
                "file_too_large", f"model is {len(data)} bytes, over the cap of {limits.max_file_bytes}"
            )
        return data
    path = os.fspath(source)
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise ModelRejected("file_not_found", f"cannot read {path}: {e.strerror}") from None
    if size > limits.max_file_bytes:
        raise ModelRejected("file_too_large", f"model is {size} bytes, over the cap of {limits.max_file_bytes}")
    try:
        with open(path, "rb") as f:
            return f.read(limits.max_file_bytes + 1)
    except OSError as e:
        raise ModelRejected("file_not_found", f"cannot read {path}: {e.strerror}") from None


def _tensor_is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0


def _tensor_bytes(t: onnx.TensorProto) -> int:
    numel = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    return numel * itemsize


class _Walk:
    """Walks every graph and subgraph once, collecting what the checks need."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.nodes = 0
        self.initializer_bytes = 0
        self.ops: Counter = Counter()
        self.foreign: Counter = Counter()

    def tensor(self, t: onnx.TensorProto, where: str) -> None:
        if _tensor_is_external(t):
            locs = {e.key: e.value for e in t.external_data}
            raise ModelRejected(
                "external_data",
                f"tensor {t.name or '(unnamed)'} in {where} references external data "
                f"(location={locs.get('location', '?')!r}); upload a self-contained model",
            )
        self.initializer_bytes += _tensor_bytes(t)
        if self.initializer_bytes > self.limits.max_initializer_bytes:
            raise ModelRejected(
                "initializers_too_large",
                f"constant tensors exceed {self.limits.max_initializer_bytes} bytes",
            )
        _check_finite(t, where)

    def attribute(self, a: onnx.AttributeProto, node: onnx.NodeProto) -> None:
        """Float attributes: NaN nowhere; a Constant's value_float(s) finite (they are weights like any other)."""
        values = [a.f] if a.type == onnx.AttributeProto.FLOAT else list(a.floats)
        strict = node.op_type == "Constant"
        bad = [v for v in values if (not np.isfinite(v) if strict else np.isnan(v))]
        if bad:
            raise ModelRejected("non_finite_constant", f"attribute {a.name} of node {node.name or node.op_type} "
                                f"holds {bad[0]}: a non-finite constant makes every bound meaningless")

    def sparse(self, s: onnx.SparseTensorProto, where: str) -> None:
        self.tensor(s.values, where)
        self.tensor(s.indices, where)

    def graph(self, g: onnx.GraphProto, depth: int) -> None:
        if depth > self.limits.max_subgraph_depth:
            raise ModelRejected("subgraph_too_deep", f"subgraphs nest deeper than {self.limits.max_subgraph_depth}")
        where = f"graph {g.name or '(main)'}"
        for t in g.initializer:
            self.tensor(t, where)
        for s in g.sparse_initializer:
            self.sparse(s, where)
        for node in g.node:
            self.nodes += 1
            if self.nodes > self.limits.max_nodes:
                raise ModelRejected("too_many_nodes", f"model has more than {self.limits.max_nodes} nodes")
            if node.domain in STANDARD_DOMAINS:
                self.ops[node.op_type] += 1
            else:
                self.foreign[f"{node.domain}.{node.op_type}"] += 1
            for a in node.attribute:
                self.attribute(a, node)
                if a.HasField("t"):
                    self.tensor(a.t, f"node {node.name or node.op_type}")
                for t in a.tensors:
                    self.tensor(t, f"node {node.name or node.op_type}")
                if a.HasField("sparse_tensor"):
                    self.sparse(a.sparse_tensor, f"node {node.name or node.op_type}")
                for s in a.sparse_tensors:
                    self.sparse(s, f"node {node.name or node.op_type}")
                if a.HasField("g"):
                    self.graph(a.g, depth + 1)
                for sub in a.graphs:
                    self.graph(sub, depth + 1)


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _values(t: onnx.TensorProto, where: str) -> np.ndarray:
    """The tensor's values, flat, read from its raw bytes without a second copy; data that does not fill its shape
    is refused (the checker never sees the large weights: see :func:`_shape_skeleton`)."""
    name = t.name or "(unnamed)"
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, TypeError, ValueError):
        raise ModelRejected("invalid_model", f"tensor {name} in {where} has unknown data type {t.data_type}") from None
    if t.HasField("raw_data") and dtype.kind in "fiub" and t.data_type != onnx.TensorProto.BFLOAT16:
        raw = t.raw_data
        if len(raw) != _numel(t.dims) * dtype.itemsize:
            raise ModelRejected("invalid_model", f"tensor {name} in {where} holds {len(raw)} bytes, but its shape "
                                f"{list(t.dims)} of {dtype} needs {_numel(t.dims) * dtype.itemsize}")
        return np.frombuffer(raw, dtype.newbyteorder("<"))
    try:
        return numpy_helper.to_array(t).reshape(-1)
    except (ValueError, TypeError) as e:
        raise ModelRejected("invalid_model", f"tensor {name} in {where}: {e}") from None


def _check_finite(t: onnx.TensorProto, where: str) -> None:
    """Refuse a float constant holding NaN or an infinity: ``max`` over NaN and ``NaN > 0`` silently turn it into a
    zero bound, and an infinite weight has no finite Lipschitz constant. Every tensor's data is checked to fill its
    shape on the way."""
    values = _values(t, where)
    if t.data_type not in _FLOAT_TYPES:
        return
    if values.dtype.kind != "f":
        values = values.astype(np.float32)
    step = 1 << 20  # a boolean mask a chunk at a time, not one the size of the tensor
    for first in range(0, values.size, step):
        bad = ~np.isfinite(values[first:first + step])
        if bad.any():
            flat = first + int(np.argmax(bad))
            index = np.unravel_index(flat, tuple(t.dims)) if len(t.dims) else ()
            raise ModelRejected("non_finite_constant", f"tensor {t.name or '(unnamed)'} in {where} holds "
                                f"{values[flat]} at index {list(map(int, index))}: non-finite weights and "
                                "constants are refused")


def _count_phrase(counter: Counter) -> str:
    return ", ".join(f"{k} ({n} node{'s' if n != 1 else ''})" for k, n in sorted(counter.items()))


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in STANDARD_DOMAINS:
            return imp.version
    return 1 if model.ir_version < 3 else 0


def unsupported_operators(model: onnx.ModelProto) -> Counter:
    """Operators of the main graph that the converter cannot handle at the model's opset, with node counts."""
    opset = opset_of(model)
    missing: Counter = Counter()
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            missing[f"{node.domain}.{node.op_type}"] += 1
        elif registry.lookup(node.op_type, opset) is None:
            missing[node.op_type] += 1
    return missing


def _parse(data: bytes) -> onnx.ModelProto:
    if not data:
        raise ModelRejected("empty_file", "the model file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelRejected("not_onnx", f"not an ONNX protobuf, or truncated: {e}") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelRejected("no_graph", "the model has no graph (or an empty one)")
    return model


def _check_opset(model: onnx.ModelProto) -> int:
    opset = opset_of(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise ModelRejected(
            "unsupported_opset",
            f"default-domain opset {opset} is outside the supported range {MIN_OPSET}..{newest}",
        )
    return opset


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Check and shape-infer ``model`` in place through a copy without its large weights: onnx's checker and shape
    inference each serialise the whole model and parse it again (in C++, then back for the result), which with the
    weights held several times the file in memory. The weights' own checks are done by the walk."""
    skel = _shape_skeleton(model, batch=None)
    try:
        onnx.checker.check_model(skel)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ModelRejected("invalid_model", f"onnx checker: {first}") from None
    inferred = _infer_shapes(skel)
    for field in ("value_info", "output"):
        model.graph.ClearField(field)
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    if any(a.HasField("g") or len(a.graphs) for n in model.graph.node for a in n.attribute):
        model.graph.ClearField("node")  # the subgraphs' inferred shapes live in their nodes
        model.graph.node.extend(inferred.graph.node)
    return model


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises several types from its C++ core
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelRejected("shape_inference_failed", f"shape inference: {first}") from None


def _dims(value_info: onnx.ValueInfoProto):
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _check_allocations(model: onnx.ModelProto, limits: Limits) -> None:
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = _dims(vi)
        if not dims or any(not isinstance(d, int) for d in dims):
            continue
        numel = int(np.prod(dims, dtype=object))
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8
        if numel * itemsize > limits.max_tensor_bytes:
            raise ModelRejected(
                "allocation_too_large",
                f"tensor {vi.name!r} of shape {dims} would need {numel * itemsize} bytes, "
                f"over the limit of {limits.max_tensor_bytes}",
            )


def fix_input_dims(model: onnx.ModelProto, input_shapes: dict | None = None) -> None:
    """Pin dynamic input dimensions. The first (batch) dimension may stay symbolic; others must be given."""
    input_shapes = input_shapes or {}
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        given = input_shapes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if given is not None:
            if len(given) != len(dims):
                raise ModelRejected(
                    "input_shape_mismatch",
                    f"input {vi.name!r} has rank {len(dims)}, but the shape given has rank {len(given)}",
                )
            for d, g in zip(dims, given):
                if g is None:
                    continue
                if d.HasField("dim_value") and d.dim_value != g:
                    raise ModelRejected(
                        "input_shape_mismatch", f"input {vi.name!r} dimension is {d.dim_value}, not {g}"
                    )
                d.Clear()
                d.dim_value = int(g)
        for i, d in enumerate(dims):
            if i > 0 and not d.HasField("dim_value"):
                raise ModelRejected(
                    "dynamic_dimension",
                    f"input {vi.name!r} has dynamic dimension {i} ({d.dim_param or 'unnamed'}); "
                    "give its size (input_shapes / --input-shape)",
                )


def _densify_sparse_initializers(model: onnx.ModelProto, limits: Limits) -> None:
    """Store sparse initializers densely: shape inference and the operators expect dense tensors."""
    from certify.ops.base import dense_of_sparse

    sparse = list(model.graph.sparse_initializer)
    for sp in sparse:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(sp.values.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8
        if int(np.prod(sp.dims, dtype=object)) * itemsize > limits.max_initializer_bytes:
            raise ModelRejected("initializers_too_large", f"sparse initializer {sp.values.name!r} of shape "
                                f"{list(sp.dims)} is over {limits.max_initializer_bytes} bytes when dense")
        try:
            dense = dense_of_sparse(sp)
        except (ValueError, IndexError) as e:
            raise ModelRejected("invalid_model", f"sparse initializer {sp.values.name!r}: {e}") from None
        model.graph.initializer.append(numpy_helper.from_array(dense, sp.values.name))
    if sparse:
        model.graph.ClearField("sparse_initializer")


def load_onnx(
    source,
    limits: Limits = DEFAULT_LIMITS,
    input_shapes: dict | None = None,
    require_supported: bool = True,
) -> onnx.ModelProto:
    """Parse, check and shape-infer an untrusted ONNX model from a path or bytes.

    Returns the model with inferred value_info. Raises :class:`ModelRejected` for every refusal.
    """
    model = _parse(_read_bytes(source, limits))
    walk = _Walk(limits)
    walk.graph(model.graph, 0)
    _check_opset(model)
    if walk.foreign:
        raise ModelRejected("custom_domain", f"Operators from non-standard domains: {_count_phrase(walk.foreign)}")
    if require_supported:
        missing = unsupported_operators(model)
        if missing:
            raise ModelRejected("unsupported_operator", f"Unsupported operators: {_count_phrase(missing)}")
    _densify_sparse_initializers(model, limits)
    fix_input_dims(model, input_shapes)
    model = _infer(model)
    _check_allocations(model, limits)
    check_allocations_at_batch(model, limits)
    return model


# Shape arithmetic that onnx's data propagation leaves unknown (Mul of a Shape by a constant, for one) is evaluated
# here on small integer tensors, so that what it feeds (ConstantOfShape, Expand, Tile, Reshape) gets a static shape.
_FOLD_MAX_ELEMENTS = 1024
_FOLD_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual",
                     "GreaterOrEqual", "Where", "And", "Or", "Not", "Neg", "Abs", "Floor", "Ceil", "Sign"}
_FOLD_SHRINKING = {"Identity", "Cast", "Gather", "Slice", "Concat", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
                   "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Size"}


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=object)) if len(shape) else 1


def _shape_skeleton(model: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """The model without its large constants (each becomes an input of the same type and shape) and, with a
    ``batch``, each input's symbolic first dimension pinned to it: shape inference needs no weights, and a copy
    without them costs nothing next to the model."""
    skel = onnx.ModelProto(ir_version=model.ir_version)
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g = skel.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    listed = {vi.name for vi in model.graph.input}
    for t in model.graph.initializer:
        if _numel(t.dims) <= _FOLD_MAX_ELEMENTS:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for vi in model.graph.input:
        g.input.append(vi)
        dims = g.input[-1].type.tensor_type.shape.dim
        if batch is not None and len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    return skel


def _fold_once(skel: onnx.ModelProto) -> bool:
    """Replace each node whose small integer result follows from static shapes and constants by a Constant holding
    it. Returns whether anything was folded."""
    shapes = {vi.name: _dims(vi) for vi in list(skel.graph.input) + list(skel.graph.value_info)}
    known = {t.name: numpy_helper.to_array(t) for t in skel.graph.initializer}
    opset = opset_of(skel)
    folded = False
    for i, node in enumerate(skel.graph.node):
        if node.domain not in STANDARD_DOMAINS or len(node.output) != 1:
            continue
        if node.op_type == "Constant":
            a = next((a for a in node.attribute if a.name == "value"), None)
            if a is not None and _numel(a.t.dims) <= _FOLD_MAX_ELEMENTS:
                known[node.output[0]] = numpy_helper.to_array(a.t)
            continue
        value = _fold_value(node, known, shapes, opset)
        if value is None:
            continue
        known[node.output[0]] = value
        skel.graph.node[i].CopyFrom(onnx.helper.make_node(
            "Constant", [], [node.output[0]], value=numpy_helper.from_array(value, node.output[0])))
        folded = True
    return folded


def _fold_value(node: onnx.NodeProto, known: dict, shapes: dict, opset: int):
    ins = [n for n in node.input if n]
    if node.op_type == "Shape":
        dims = shapes.get(ins[0])
        if not dims or any(not isinstance(d, int) for d in dims):
            return None
        attrs = {a.name: a.i for a in node.attribute}
        return np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims)) or None], np.int64)
    if node.op_type not in _FOLD_ELEMENTWISE | _FOLD_SHRINKING or not all(n in known for n in ins):
        return None
    values = [known[n] for n in ins]
    if any(v.dtype.kind not in "iub" or v.size > _FOLD_MAX_ELEMENTS for v in values):
        return None
    if node.op_type in _FOLD_ELEMENTWISE:
        try:
            if _numel(np.broadcast_shapes(*(v.shape for v in values))) > _FOLD_MAX_ELEMENTS:
                return None
        except ValueError:
            return None  # the model is wrong; shape inference or the run says so
    from onnx.reference import ReferenceEvaluator

    try:
        (out,) = ReferenceEvaluator(node, opsets={"": opset}).run(None, dict(zip(ins, values)))
    except Exception:  # noqa: BLE001 - a node the evaluator cannot fold stays as it is
        return None
    out = np.asarray(out)
    return out if out.size <= _FOLD_MAX_ELEMENTS and out.dtype.kind in "iub" else None


def check_allocations_at_batch(model: onnx.ModelProto, limits: Limits = DEFAULT_LIMITS, batch: int = 1) -> None:
    """The allocation caps for every tensor whose shape is known once each symbolic batch dimension is ``batch``
    (1: the least any run uses) and shape arithmetic on static sizes is evaluated: ``ConstantOfShape(Shape(x) *
    [100000, 100000])`` is refused here, before any run. Leaves ``model`` as it is."""
    skel = _shape_skeleton(model, batch)
    for _ in range(4):  # each round can make the sizes behind one more level of shape arithmetic static
        skel = _infer_shapes(skel)
        _check_allocations(skel, limits)
        if not _fold_once(skel):
            return
        del skel.graph.value_info[:]
