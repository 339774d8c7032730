"""Conversion check: the converted module against onnxruntime, node by node, on the same seeded inputs.

Comparing final outputs alone cannot tell a conversion bug from an ill-conditioned model (a softmax over huge equal
logits turns float32 summation-order noise into a visible difference). So every intermediate tensor is exposed as an
onnxruntime output and each converted node is checked twice:

- **globally**: its value in the converted run against onnxruntime's, within a tolerance scaled to the tensor's
  magnitude and to the rounding accumulated along the worst path that computes it;
- **locally**: the torch node run on onnxruntime's own inputs to that node, against onnxruntime's output. Given
  identical inputs a correct node differs only by its own rounding, so a node is blamed only when this fails.

Verdicts: ``ok``; ``mismatch`` (some node is locally wrong: the first one is named; the model must not be
certified); ``ill_conditioned`` (every node is locally right but the outputs still differ beyond tolerance: the
node where the differences get amplified is named). The method follows per-layer comparisons such as Polygraphy's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from certify.ops.base import TORCH_OF_ONNX

# One node's own rounding given identical inputs, in units of the dtype's machine epsilon, relative to the largest
# magnitude in the reference tensor (float32: 6.1e-5), before the scaling for reductions (_local_tolerance).
LOCAL_ULPS = 512
# Bytes of onnxruntime intermediates fetched at once; a larger model is compared in several onnxruntime runs.
FETCH_BUDGET_BYTES = 1024**3
FOLDED_CHECK_ELEMENTS = 1 << 16
# Operators that sum many terms, and among them those that sum products (measured against the sum of |terms|).
SUMS_OF_PRODUCTS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "ReduceSum", "ReduceMean",
                              "GlobalAveragePool", "AveragePool", "CumSum"})
REDUCING = SUMS_OF_PRODUCTS | {"ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "GlobalLpPool", "LpPool",
                               "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization",
                               "GroupNormalization", "MeanVarianceNormalization", "LRN"}


def input_specs(model: onnx.ModelProto, batch: int = 1) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, concrete shape, ONNX elem type) of each real graph input; a symbolic dimension becomes ``batch``."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim)
        specs.append((vi.name, shape, t.elem_type))
    return specs


def sample_inputs(model: onnx.ModelProto, batch: int = 2, input_range=(0.0, 1.0), seed: int = 0):
    """Seeded uniform inputs within ``input_range`` for every graph input (numpy, in the declared dtypes)."""
    rng = np.random.default_rng(seed)
    lo, hi = input_range
    arrays = []
    for _, shape, elem in input_specs(model, batch):
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(np_dtype, np.floating):
            arrays.append(rng.uniform(lo, hi, size=shape).astype(np_dtype))
        else:
            arrays.append(rng.integers(0, 2, size=shape).astype(np_dtype))
    return arrays


def onnxruntime_session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """A CPU session on the original model (the reference every converted result is checked against)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model: onnx.ModelProto, arrays) -> list[np.ndarray]:
    feeds = {spec[0]: a for spec, a in zip(input_specs(model), arrays)}
    return onnxruntime_session(model).run(None, feeds)


def _tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The inferred tensor type of every top-level value that shape inference could type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference raises several types; fall back to what the model declares)
        inferred = model
    g = inferred.graph
    return {vi.name: vi.type for vi in list(g.value_info) + list(g.output) + list(g.input)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}


def _exposing(model: onnx.ModelProto, names: list[str], types: dict) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``names`` (typed by their element type only)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name].tensor_type.elem_type,
                                                                           None))
    return exposed


def _nbytes(type_proto: onnx.TypeProto, batch: int) -> int:
    t = type_proto.tensor_type
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    dims = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim] if t.HasField("shape") else [1]
    return int(np.prod(dims, dtype=np.float64)) * itemsize


def _chunk_ids(steps: list, exposed: dict, batch: int) -> tuple[list[int], list[list[str]]]:
    """Group consecutive steps so that the reference tensors each group reads or writes fit the fetch budget.

    Returns the group of every step and, per group, the names to fetch from onnxruntime.
    """
    ids, groups, size = [], [[]], 0
    for inputs, outputs in ((i, o) for _, i, o in steps):
        names = [n for n in dict.fromkeys(list(inputs) + list(outputs)) if n in exposed]
        new = [n for n in names if n not in groups[-1]]
        extra = sum(_nbytes(exposed[n], batch) for n in new)
        if groups[-1] and size + extra > FETCH_BUDGET_BYTES:
            groups.append([])
            new, extra = names, sum(_nbytes(exposed[n], batch) for n in names)
        groups[-1] += new
        size = extra if len(groups[-1]) == len(new) else size + extra
        ids.append(len(groups) - 1)
    return ids, groups


def _epsilon(value: np.ndarray) -> float:
    return float(np.finfo(value.dtype).eps) if np.issubdtype(value.dtype, np.floating) else 0.0


def _difference(got: torch.Tensor, ref: np.ndarray, scale: float | None = None) -> tuple[float, float]:
    """(max absolute, relative) difference: relative to ``scale``, by default the largest finite magnitude in ``ref``.

    Equal non-finite entries agree; a shape change or a differing exact (integer, bool) value is inf.
    """
    if tuple(got.shape) != tuple(ref.shape):
        return float("inf"), float("inf")
    if ref.size == 0:
        return 0.0, 0.0
    b = torch.from_numpy(np.ascontiguousarray(ref))
    a = got.detach().to("cpu")
    if not (b.is_floating_point() and a.is_floating_point()):
        same = torch.equal(a.to(b.dtype), b)
        return (0.0, 0.0) if same else (float("inf"), float("inf"))
    work = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(work), b.to(work)
    diff = (a - b).abs_()
    worst = float(diff.max())
    if not np.isfinite(worst):  # the slow path only where something is not finite
        agree = (a == b) | (a.isnan() & b.isnan())
        worst = float(torch.where(agree, 0.0, diff).nan_to_num_(nan=float("inf")).max())
    if scale is None:
        magnitude = b.abs()
        scale = float(magnitude.max())
        if not np.isfinite(scale):
            finite = magnitude[magnitude.isfinite()]
            scale = float(finite.max()) if finite.numel() else 0.0
    return worst, (worst / scale if scale > 0 else worst)


def _local_tolerance(node, args, value: np.ndarray) -> tuple[float, float | None]:
    """(relative tolerance, magnitude to measure against) of one node's own rounding given identical inputs.

    Float summation error grows with the number of terms K (about sqrt(K) eps for unordered sums), so nodes that
    reduce get a tolerance scaled by sqrt of their largest input dimension (a proxy for K). For sums of products
    (Conv, Gemm, MatMul, pools) the error is measured against the node evaluated on the magnitudes of its inputs
    (the sum of |terms|), since cancellation can leave an output far smaller than the terms that were rounded.
    """
    eps = _epsilon(value)
    if not eps:
        return 0.0, None
    if node.op_type not in REDUCING:
        return LOCAL_ULPS * eps, None
    k = max((max(a.shape, default=1) for a in args if isinstance(a, torch.Tensor)), default=1)
    scale = None
    if node.op_type in SUMS_OF_PRODUCTS:
        magnitude = node(*[a.abs() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
        magnitude = magnitude[0] if isinstance(magnitude, (tuple, list)) else magnitude
        scale = float(magnitude.abs().max()) if magnitude.numel() else None
        scale = scale if scale is not None and np.isfinite(scale) and scale > 0 else None
    return LOCAL_ULPS * eps * float(np.sqrt(k)), scale


def _like(value: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor with the dtype, device and memory format the converted run used."""
    tensor = torch.from_numpy(np.ascontiguousarray(value)).to(like.device, like.dtype)
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _local_error(graph, node, inputs, outputs, env, ref) -> tuple[float, float, str] | None:
    """``node`` run on onnxruntime's inputs: its worst output's difference in units of its tolerance, the tolerance
    and the output's name.

    None when some input has no onnxruntime value. Constants (weights; folded values are checked on their own)
    come from the converted graph.
    """
    args = []
    for name in inputs:
        if not name:
            args.append(None)
        elif graph.constant(name) is not None:
            args.append(env[name])
        elif name in ref:
            args.append(_like(ref[name], env[name]))
        else:
            return None
    out = node(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    worst = (0.0, 0.0, outputs[0])
    for name, value in zip(outputs, outs):
        if name and name in ref and value is not None:
            rel_tolerance, scale = _local_tolerance(node, args, ref[name])
            rel = _difference(value, ref[name], scale)[1]
            units = rel / rel_tolerance if rel_tolerance else (0.0 if rel == 0 else float("inf"))
            worst = max(worst, (units, rel_tolerance, name))
    return worst


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n: node for node in model.graph.node for n in node.output if n}


def _folded_divergence(model, graph, exposed, session, feeds) -> dict | None:
    """The first folded (evaluated at conversion) value that differs from onnxruntime's, or None.

    Values over ``FOLDED_CHECK_ELEMENTS`` (weights built by ConstantOfShape and the like) are left to the local
    check of the nodes that read them.
    """
    names = [n for n in exposed if graph.constant(n) is not None and graph.constant(n).numel() <= FOLDED_CHECK_ELEMENTS]
    producers = _producers(model)
    for name, ref in zip(names, session.run(names, feeds) if names else []):
        eps = _epsilon(ref)
        rel = _difference(graph.constant(name), ref)[1]
        local = rel / (LOCAL_ULPS * eps) if eps else (0.0 if rel == 0 else float("inf"))
        if local > 1.0:
            node = producers[name]
            return {"node": node.name, "op": node.op_type, "output": name, "local_error": local,
                    "tolerance": LOCAL_ULPS * eps}
    return None


class _Comparison:
    """The running state of one node-by-node comparison.

    A tensor's global tolerance is the sum of the local tolerances along the worst path that computes it: rounding
    differences accumulate through the graph, and a tensor beyond that sum has had them amplified.
    """

    def __init__(self):
        self.tolerance: dict[str, float] = {}
        self.global_rel: dict[str, float] = {}
        self.first_divergent: dict | None = None
        self.amplification: dict | None = None
        self.checked = 0
        self.unchecked: list[str] = []
        self.worst_local = 0.0

    def node(self, graph, node, inputs, outputs, env, ref) -> None:
        upstream = max((self.tolerance.get(n, 0.0) for n in inputs if n), default=0.0)
        local = _local_error(graph, node, inputs, outputs, env, ref)
        if local is None:
            self.unchecked.append(node.onnx_name)
            own = LOCAL_ULPS * float(np.finfo(np.float32).eps)
        else:
            self.checked += 1
            units, own, output = local
            self.worst_local = max(self.worst_local, units)
            if units > 1.0 and self.first_divergent is None:
                self.first_divergent = {"node": node.onnx_name, "op": node.op_type, "output": output,
                                        "local_error": units, "tolerance": own}
        tolerance = upstream + own
        self.tolerance.update((n, tolerance) for n in outputs if n)
        for name in outputs:
            if not (name and name in ref and name in env):
                continue
            rel = _difference(env[name], ref[name])[1]
            self.global_rel[name] = rel
            if rel > tolerance and self.amplification is None:
                before = max((self.global_rel.get(n, 0.0) for n in inputs if n), default=0.0)
                self.amplification = {"node": node.onnx_name, "op": node.op_type, "output": name,
                                      "input_rel_error": before, "output_rel_error": rel, "tolerance": tolerance}


def _final_differences(got: dict, reference: dict, tolerances: dict) -> tuple[float | None, float | None, float, str]:
    """Worst absolute and relative output differences, the outputs' tolerance, and an error text (or "")."""
    max_abs = max_rel = 0.0
    tolerance = float("inf")
    for name, ref in reference.items():
        value = got[name]
        if tuple(value.shape) != tuple(ref.shape):
            return None, None, 0.0, f"output shape {tuple(value.shape)} differs from onnxruntime's {ref.shape}"
        diff, rel = _difference(value, np.asarray(ref))
        max_abs, max_rel = max(max_abs, diff), max(max_rel, rel)
        tolerance = min(tolerance, tolerances.get(name, LOCAL_ULPS * (_epsilon(np.asarray(ref)) or 1e-7)))
    return max_abs, max_rel, tolerance, ""


def verify_conversion(
    model: onnx.ModelProto, module: torch.nn.Module, batch: int = 2, input_range=(0.0, 1.0), seed: int = 0
) -> dict:
    """Node-by-node comparison of ``module`` (an ``OnnxGraph``) with onnxruntime on seeded inputs.

    Keeps ``max_abs_diff`` / ``max_rel_diff`` (worst over the graph outputs; relative means
    ``max|torch - ort| / max|ort|``) and adds ``status`` (ok / mismatch / ill_conditioned), ``first_divergent``
    (the first node that is wrong given onnxruntime's own inputs, with ``local_error`` in units of its tolerance),
    ``amplification`` (the first node whose accumulated difference exceeds its tolerance), ``tolerance`` (the
    outputs' relative tolerance) and how many nodes were checked locally.
    """
    arrays = sample_inputs(model, batch, input_range, seed)
    specs = input_specs(model, batch)
    feeds = {spec[0]: a for spec, a in zip(specs, arrays)}
    steps = list(module.steps())
    session, exposed = _exposed_session(model)
    device = next((b.device for b in module.buffers()), torch.device("cpu"))
    tensors = [torch.from_numpy(a).to(device, TORCH_OF_ONNX.get(s[2], torch.float32)) for a, s in zip(arrays, specs)]
    output_names = list(module.output_names)
    state = _Comparison()
    state.first_divergent = _folded_divergence(model, module, exposed, session, feeds)
    ids, groups = _chunk_ids(steps, exposed, batch)
    got: dict[str, torch.Tensor] = {}
    reference: dict[str, np.ndarray] = {}
    current, ref = -1, {}
    with torch.no_grad():
        for index, (node, inputs, outputs, env) in enumerate(module.execute(*tensors, release=True)):
            if ids[index] != current:
                current, ref = ids[index], {}
                wanted = [n for n in groups[current] if n not in feeds]
                ref = {**feeds, **dict(zip(wanted, session.run(wanted, feeds)))}
            state.node(module, node, inputs, outputs, env, ref)
            got.update((n, env[n]) for n in output_names if n in env)
            reference.update((n, ref[n]) for n in output_names if n in ref)
        ref = {}
        if len(got) < len(output_names):
            got = dict(zip(output_names, module.run(*tensors)))
    missing = [n for n in output_names if n not in reference]
    reference.update(zip(missing, session.run(missing, feeds) if missing else []))
    reference = {n: reference[n] for n in output_names}
    return _record(state, got, reference, len(steps), batch=batch, seed=seed, input_range=input_range)


def _exposed_session(model: onnx.ModelProto) -> tuple:
    """An onnxruntime session that also returns every intermediate value something reads, and their types; where
    onnxruntime refuses to expose them, a plain session and none."""
    types = _tensor_types(model)
    # Only values that something reads can change a result (onnxruntime fills an unused Dropout mask with zeros).
    read = {n for node in model.graph.node for n in node.input} | {o.name for o in model.graph.output}
    exposed = {n: types[n] for n in _producers(model) if n in types and n in read}
    try:
        return onnxruntime_session(_exposing(model, list(exposed), types)), exposed
    except Exception:  # noqa: BLE001  (onnxruntime refuses some exposed intermediates: compare the outputs only)
        return onnxruntime_session(model), {}


def _record(state: _Comparison, got: dict, reference: dict, nodes: int, *, batch: int, seed: int,
            input_range) -> dict:
    """The conversion check's record: the output differences and the status they and the node checks give."""
    max_abs, max_rel, tolerance, error = _final_differences(got, reference, state.tolerance)
    result = {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "batch": batch, "seed": seed,
              "input_range": list(input_range)}
    if error:
        return {**result, "status": "mismatch", "error": error, "first_divergent": _finite(state.first_divergent)}
    if state.first_divergent is not None:
        status = "mismatch"
    elif max_rel > tolerance:
        # Amplified rounding explains the difference only if every node was shown right on identical inputs.
        status = "ill_conditioned" if state.checked == nodes else "mismatch"
    else:
        status = "ok"
    return {**result, "status": status, "tolerance": tolerance, "first_divergent": _finite(state.first_divergent),
            "amplification": _finite(state.amplification) if status != "ok" else None, "nodes": nodes,
            "nodes_checked": state.checked, "unchecked": state.unchecked[:10],
            "max_local_error": _finite(state.worst_local)}


def _finite(value):
    """JSON has no infinity: an infinite difference (a changed shape or integer value) is recorded as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not np.isfinite(value) else value


def mismatch_message(result: dict) -> str:
    """One line naming where a ``mismatch`` verdict comes from."""
    node = result.get("first_divergent")
    if node:
        size = "beyond any tolerance" if node["local_error"] is None else f"{node['local_error']:.3g}x its tolerance"
        return (f"node {node['node']} ({node['op']}) disagrees with onnxruntime on identical inputs: output "
                f"{node['output']} differs {size} ({node['tolerance']:.2g} relative)")
    if result.get("error"):
        return result["error"]
    return (f"the outputs differ from onnxruntime's (max relative difference {result['max_rel_diff']:.3g}, "
            f"tolerance {result['tolerance']:.2g}) and {result['nodes'] - result['nodes_checked']} node(s) could not "
            "be checked one by one")
