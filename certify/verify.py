"""Conversion check: the converted module against onnxruntime on the same seeded inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from certify.ops.base import TORCH_OF_ONNX


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
    session = onnxruntime_session(model)
    feeds = {spec[0]: a for spec, a in zip(input_specs(model), arrays)}
    return session.run(None, feeds)


def verify_conversion(
    model: onnx.ModelProto, module: torch.nn.Module, batch: int = 2, input_range=(0.0, 1.0), seed: int = 0
) -> dict:
    """Max absolute and relative differences between ``module`` and onnxruntime.

    The relative difference of an output is ``max|torch - ort| / max|ort|`` (relative to the output's scale, so
    that near-zero entries do not dominate); the worst over outputs is reported.
    """
    arrays = sample_inputs(model, batch, input_range, seed)
    reference = onnxruntime_outputs(model, arrays)
    specs = input_specs(model, batch)
    device = next((b.device for b in module.buffers()), torch.device("cpu"))
    tensors = [torch.from_numpy(a).to(device, TORCH_OF_ONNX.get(s[2], torch.float32)) for a, s in zip(arrays, specs)]
    with torch.no_grad():
        out = module(*tensors)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    max_abs = 0.0
    max_rel = 0.0
    for got, ref in zip(outs, reference):
        got = got.detach().cpu().double().numpy()
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            return {"max_abs_diff": None, "max_rel_diff": None, "batch": batch, "seed": seed,
                    "error": f"output shape {got.shape} differs from onnxruntime's {ref.shape}"}
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "batch": batch, "seed": seed,
            "input_range": list(input_range)}
