"""The batch a global analysis runs a graph at, and the check that makes a per-sample bound of a batched run valid.

Most graphs run at batch 1. One exported for a fixed batch B > 1 that reshapes by it (``Reshape(x, [4, -1])``)
runs only at B, so its tensors are analysed at batch B and each operator's rule sees the per-sample shapes (the
batch axis dropped). That is a bound on one sample's map only if the graph keeps its samples apart: output sample
j must not read input sample k != j. Graphs exported from per-sample models do; one that mixes samples (a
reshape to ``[1, -1]`` feeding a dense layer, a reduction or softmax over the batch axis, a transpose that moves it)
has no per-sample function at all, and is refused with ``samples_interact``.

The check is a dependency test by NaN taint: the input samples of a set S are NaN, the others finite. In IEEE
arithmetic every operation with a NaN operand gives NaN (torch's max, clamp, pooling and reductions propagate it
too) and data movement copies it, so a tensor whose sample j (not in S) stays NaN-free reads no input sample of S on
any path. Two sets per bit of the sample index (the samples whose bit is 1, those whose bit is 0) separate every
pair j != k, so 2 ceil(log2 B) runs test every pair. The one way around it is a value computed through integers or
booleans (a comparison, an ArgMax): such a graph is refused too, as one whose separation cannot be shown. Every
tensor that depends on the input must also keep the batch on its first axis, so the per-sample shapes the rules
see are the samples' own.

Samples apart is not yet one per-sample map: a constant whose first axis lines up with the batch (under numpy
broadcasting: of the output's rank, with B rows) gives each batch position its own map (``x * c`` with c of shape
``[4, 36]``). The bound is computed for one position (fused segments and the float error run the sample at the
first), so such a constant must have equal rows; otherwise the graph is refused with ``batch_positions_differ``.
A weight whose first axis only happens to have B entries (a Conv or Gemm weight, a MatMul matrix) is exempt.
"""

from __future__ import annotations

import torch

from certify.errors import ModelRejected


def analysis_batch(graph) -> int:
    """The batch a global analysis runs ``graph`` at: its fixed batch when it reshapes by it, else 1."""
    return graph.fixed_batch if graph.reshapes_by_batch() else 1


def _varying(graph, input_name: str) -> list[tuple[str, str]]:
    """``(tensor, node)`` for every tensor computed from the input (shape-only operators aside)."""
    live, out = {input_name}, []
    for module, inputs, outputs in graph.steps():
        if module.shape_only or not any(n in live for n in inputs if n):
            continue
        for name in outputs:
            if name:
                live.add(name)
                out.append((name, module.onnx_name))
    return out


def _refuse(node: str, why: str):
    return ModelRejected("samples_interact", f"the graph is exported for a fixed batch and {why} at node {node}, "
                         "so it has no per-sample Lipschitz bound")


def _probes(batch: int):
    """Sets of samples such that for every pair j != k one set holds k and not j (one per bit value of the index)."""
    for bit in range(max(batch - 1, 1).bit_length()):
        for value in (0, 1):
            probe = [k for k in range(batch) if (k >> bit) & 1 == value]
            if probe and len(probe) < batch:
                yield probe


def _check_positions(graph, env: dict, live: set, batch: int) -> None:
    """Refuse (``batch_positions_differ``) a constant that gives batch positions their own maps (module docstring)."""
    for module, inputs, outputs in graph.steps():
        if module.shape_only or not any(n in live for n in inputs if n):
            continue
        rank = max((env[n].dim() for n in outputs if n and isinstance(env.get(n), torch.Tensor)), default=0)
        for index, name in enumerate(inputs):
            value = env.get(name) if name and name not in live else None
            if (not isinstance(value, torch.Tensor) or value.dim() != rank or value.shape[0] != batch
                    or module.own_first_axis(index, value)):
                continue
            if not bool((value == value[:1]).all()):
                raise ModelRejected("batch_positions_differ", f"the graph is exported for a fixed batch and node "
                                    f"{module.onnx_name} applies a constant ({name}) whose rows differ along the batch "
                                    "axis, so the samples at different batch positions go through different maps")


def check_samples_apart(graph, input_name: str, input_shape, batch: int, dtype: torch.dtype) -> None:
    """Raise ``samples_interact`` unless every tensor computed from the input keeps the ``batch`` samples apart,
    ``batch_positions_differ`` unless every position of the batch goes through the same map."""
    varying = _varying(graph, input_name)
    base = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    for probe in [[], *_probes(batch)]:  # first the NaN-free run: every varying tensor must be finite there
        x = base.clone()
        x[probe] = float("nan")
        with torch.no_grad():
            _, env = graph.run(x, keep=True)
        others = torch.ones(batch, dtype=torch.bool)
        others[probe] = False
        for name, node in varying:
            value = env.get(name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise _refuse(node, "computes a non-float value from the input (samples may mix through it)")
            if value.dim() == 0 or value.shape[0] != batch:
                raise _refuse(node, f"moves the batch axis (shape {list(value.shape)}, batch {batch})")
            if torch.isnan(value.reshape(batch, -1)[others]).any():
                why = (f"mixes samples (input samples {probe} reach another sample)" if probe
                       else "gives NaN on finite inputs (whether samples stay apart cannot be checked)")
                raise _refuse(node, why)
        if not probe:
            _check_positions(graph, env, {input_name, *(name for name, _ in varying)}, batch)
