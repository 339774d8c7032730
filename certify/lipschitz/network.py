"""The network's Lipschitz bound: the operators' own rules composed along the DAG.

Every node is bounded by its operator's rule (``op.lipschitz(ctx)``, beside the operator in ``certify.ops``; the
vocabulary of the answers is :mod:`certify.lipschitz.rules`). This module knows no operator by name: it composes
what the rules answer, fuses linear neighbours (:mod:`certify.lipschitz.segments`), bounds chains of dense layers and
activations jointly (:mod:`certify.lipschitz.eclipse`) and recognises exported gated activations
(:mod:`certify.lipschitz.gated`).

Composition: ``L[t]`` bounds the Lipschitz constant of ``input -> t`` for every tensor ``t``. A one-input node
multiplies, a sum adds the (broadcast-scaled) bounds of its terms, a concatenation takes their root-sum-square;
tensors that do not depend on the input (shapes, constants) have ``L = 0``. This is sound on any DAG, shared
inputs included, by the triangle inequality. Two routes are reported:

- ``product``: every node bounded alone (for a chain: the plain product of Szegedy et al.'s Table 5);
- ``upper`` (composed): linear neighbours fused into one operator (Conv+BatchNorm, Gemm chains, reshapes in
  between) and ECLipsE-Fast on chains of dense layers and slope-restricted activations; every step takes the
  minimum with the product route, so ``upper <= product`` always.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.lipschitz import batch, constants
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.eclipse import Chain, bound_chain, find_chains
from certify.lipschitz.gated import gated_activation
from certify.lipschitz.rules import (
    Activation,
    Combine,
    Linear,
    LipschitzContext,
    copies_factor,
    numel,
    per_sample,
    unbounded,
)
from certify.lipschitz.segments import NodeRecord, Segment, bound_segment, find_segments, linear_bound


@dataclass
class Analysis:
    records: list[NodeRecord]
    segments: list[Segment]
    chains: list[Chain]
    product: dict  # tensor -> bound (None: unbounded)
    composed: dict
    reasons: dict  # tensor -> why unbounded
    input_name: str
    output_name: str
    input_shape: tuple
    output_shape: tuple
    norm: str
    chains_skipped: int = 0  # chains left to the product when the composition's time budget ran out


def _context(module, inputs, outputs, env, varying: set, norm) -> LipschitzContext:
    shapes = [per_sample(env[n].shape) if n and n in env and isinstance(env[n], torch.Tensor) else None
              for n in inputs]
    consts = [None if (n in varying) else (env.get(n) if n else None) for n in inputs]
    out_shapes = [per_sample(env[n].shape) if n in env else None for n in outputs]
    dtypes = [env[n].dtype if n and isinstance(env.get(n), torch.Tensor) else None for n in inputs]
    return LipschitzContext(norm=norm, node=module.onnx_name, op_type=module.op_type, input_shapes=shapes,
                            output_shapes=out_shapes, constants=consts, input_dtypes=dtypes)


def _rule(module, ctx: LipschitzContext):
    """The operator's own rule (``OnnxOp.lipschitz``); a failing rule is reported, not raised."""
    try:
        return module.lipschitz(ctx)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        return unbounded(ctx, f"its bound rule failed ({type(e).__name__}: {e})")


def _mul(a: float | None, b: float | None) -> float | None:
    if a == 0 or b == 0:
        return 0.0
    if a is None or b is None:
        return None
    return a * b


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def analyse(graph, input_shape, norm: str = "l2", progress: Callable[[float, str], None] | None = None,
            eclipse: bool = True, on_record: Callable[[NodeRecord], None] | None = None,
            chain_budget_s: float | None = None) -> Analysis:
    """Bound every node of ``graph`` (an ``OnnxGraph``) and compose the bounds from its input to its output.

    ``input_shape`` is the per-sample input shape (batch excluded). ``progress(fraction, message)`` is called
    after every node, ``on_record(record)`` with every node bounded on its own. ``chain_budget_s`` (default: none)
    caps the seconds spent on joint chain bounds: chains reached later keep the product of their layers' bounds
    (still sound, possibly looser), counted in ``Analysis.chains_skipped``.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', not {norm!r}")
    if len(graph.input_names) != 1 or len(graph.output_names) != 1:
        raise ValueError("Lipschitz bounds need a graph with one input and one output")
    input_name, output_name = graph.input_names[0], graph.output_names[0]
    env = _run_at_zero(graph, input_name, input_shape)
    steps = list(graph.steps())
    consumers: dict[str, int] = {}
    for _, inputs, _ in steps:
        for n in inputs:
            if n:
                consumers[n] = consumers.get(n, 0) + 1
    tables = _Tables(product={input_name: 1.0}, composed={input_name: 1.0}, varying={input_name})
    producers = {n: (module, inputs) for module, inputs, outputs in steps for n in outputs if n}
    report = progress or (lambda fraction, message: None)
    records: list[NodeRecord] = []
    for index, (module, inputs, outputs) in enumerate(steps):
        record = NodeRecord(index, module, inputs, outputs, _context(module, inputs, outputs, env, tables.varying,
                                                                     norm), rule=None,
                            varying=[n for n in inputs if n in tables.varying])
        records.append(record)
        _bound_node(record, tables, producers, env, norm)
        if on_record is not None and record.varying:
            on_record(record)
        report((index + 1) / max(len(steps), 1), f"{module.onnx_name} ({module.op_type})")

    segments = find_segments(records, consumers, graph.output_names)
    for segment in segments:
        if all(r.bound.upper is not None for r in segment.members):
            bound_segment(segment, env, norm)
    chains, skipped = _bound_chains(records, segments, consumers, graph.output_names, output_name,
                                    eclipse and norm == "l2", chain_budget_s)
    _recompose(records, segments, chains, tables.composed, consumers)
    return Analysis(records, segments, chains, tables.product, tables.composed, tables.reasons, input_name,
                    output_name, tuple(input_shape), per_sample(env[output_name].shape), norm, skipped)


def _bound_chains(records, segments, consumers, graph_outputs, output_name: str, enabled: bool,
                  budget_s: float | None) -> tuple[list, int]:
    """ECLipsE-Fast on chains of explicit dense layers, then the averaged-operator chains, then the pooled
    convolution blocks; those reached after ``budget_s`` seconds are skipped. Returns (bounded chains, how many
    were skipped)."""
    if not enabled:
        return [], 0
    from certify.lipschitz import averaged, pooled

    deadline = None if budget_s is None else time.monotonic() + budget_s
    chains, skipped = [], []
    for chain in find_chains(records, segments, consumers, graph_outputs):
        if deadline is not None and time.monotonic() > deadline:
            skipped.append(chain)
            continue
        bound_chain(chain, output_name)
        chains.append(chain)
    chains += averaged.bound_chains(records, segments, consumers, graph_outputs, deadline=deadline, skipped=skipped)
    chains += pooled.bound_pool_blocks(records, segments, consumers, graph_outputs, deadline=deadline,
                                       skipped=skipped)
    return chains, len(skipped)


@dataclass
class _Tables:
    """The two routes' bounds per tensor, why a tensor is unbounded, and which tensors depend on the input."""

    product: dict
    composed: dict
    varying: set
    reasons: dict = field(default_factory=dict)


def _run_at_zero(graph, input_name: str, input_shape) -> dict:
    """Every tensor of the graph at a zero input: shapes, and the values of the constant ones. The graph runs at
    batch 1, or at its fixed batch when it reshapes by it; then only if it keeps its samples apart
    (:mod:`certify.lipschitz.batch`), so the per-sample shapes the rules see bound one sample's map."""
    dtype = graph.input_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"input {input_name!r} is not a float tensor ({dtype})")
    size = batch.analysis_batch(graph)
    x0 = torch.zeros((size, *input_shape), dtype=dtype)
    try:
        with torch.no_grad():
            _, env = graph.run(x0, keep=True)
    except (RuntimeError, ValueError, IndexError) as e:
        raise ValueError(f"the model does not run on inputs of shape {[size, *input_shape]}: {e}") from e
    if size > 1:
        batch.check_samples_apart(graph, input_name, input_shape, size, dtype)
    return env


def _bound_node(record: NodeRecord, tables: _Tables, producers: dict, env: dict, norm: str) -> None:
    """The node's own bound (its rule, or a recognised gated activation) and both routes at its outputs."""
    live, outputs = record.varying, record.outputs
    if not live:
        for n in outputs:
            tables.product[n] = tables.composed[n] = 0.0
        record.bound = LayerBound(upper=0.0, lower=0.0, method="no varying input", exact=True, norm=norm)
        return
    started = time.perf_counter()
    gated = gated_activation(record, producers, env) if len(live) == 2 else None
    if gated is not None:
        record.rule, record.varying = gated
    else:
        record.rule = _rule(record.module, record.ctx)
    record.bound = _finite_bound(_own_bound(record, norm), record.ctx)
    record.bound.ms = record.bound.ms or (time.perf_counter() - started) * 1e3
    p_out = propagate(record, tables.product)
    c_out = propagate(record, tables.composed)
    for value in (p_out, c_out):
        constants.finite(math.inf if value is None else value, f"the bound at {record.module.onnx_name}")
    for n in outputs:
        if not n:
            continue
        tables.product[n], tables.composed[n] = p_out, c_out
        if p_out is None or c_out is None:
            tables.reasons[n] = record.bound.reason or next((tables.reasons[i] for i in live if i in tables.reasons),
                                                            None)
        if p_out != 0.0:
            tables.varying.add(n)


def _own_bound(record: NodeRecord, norm: str) -> LayerBound:
    rule = record.rule
    if rule is None:
        return constants.unbounded(f"no Lipschitz rule for {record.ctx.op_type}", norm)
    if isinstance(rule, LayerBound):
        return rule
    if isinstance(rule, Activation):
        return rule.bound
    if isinstance(rule, Linear):
        if len(record.varying) != 1:
            return constants.unbounded(f"{record.ctx.op_type} with several varying inputs", norm)
        return linear_bound(rule, record.ctx.in_shape, norm)
    if isinstance(rule, Combine):
        return LayerBound(upper=None, lower=None, method=f"combine ({rule.kind})", norm=norm)
    raise TypeError(f"{record.ctx.op_type}.lipschitz returned {type(rule).__name__}")


def _finite_bound(bound: LayerBound, ctx: LipschitzContext) -> LayerBound:
    """NaN is an error (never a bound); an infinite constant is reported unbounded."""
    if bound.upper is None:
        return bound
    constants.finite(bound.upper, f"the bound of {ctx.op_type} {ctx.node}")
    if math.isinf(bound.upper):
        return unbounded(ctx, "its constant is infinite (a division by zero in its parameters?)")
    return bound


def broadcast_factor(ctx: LipschitzContext, index: int) -> float:
    """A term broadcast to the output is copied numel(out)/numel(in) times: its L2 norm grows by the square root."""
    return copies_factor(numel(ctx.out_shape) / max(numel(ctx.input_shapes[index]), 1), ctx.norm)


def propagate(record: NodeRecord, table: dict) -> float | None:
    """Bound of ``input -> output`` of this node from the bounds of its inputs (one route)."""
    rule, ctx = record.rule, record.ctx
    if isinstance(rule, Combine):
        terms = []
        for i in ctx.varying_inputs:
            value = table.get(record.inputs[i])
            if value is None:
                return None
            terms.append((value, broadcast_factor(ctx, i)))
        if rule.kind == "sum":
            return rule.scale * sum(v * f for v, f in terms)
        if rule.kind == "concat":  # no broadcasting: every entry appears once
            terms = [(v, 1.0) for v, _ in terms]
        return rule.scale * _joint(terms, ctx.norm)
    values = [table.get(n) for n in record.varying]
    if any(v is None for v in values):
        incoming = None
    elif len(values) == 1:  # a lone varying input broadcast over a bigger output (Clip's scalar bounds) is copied
        copies = 1.0 if isinstance(rule, Linear) or len(ctx.varying_inputs) != 1 else \
            broadcast_factor(ctx, ctx.varying_inputs[0])
        incoming = values[0] * max(copies, 1.0)
    else:  # a joint constant w.r.t. the concatenated (broadcast) varying inputs
        incoming = _joint([(table[record.inputs[i]], broadcast_factor(ctx, i)) for i in ctx.varying_inputs],
                          ctx.norm)
    return _mul(record.bound.upper, incoming)


def _joint(terms, norm: str) -> float:
    """Norm of the concatenation of terms ``(bound, broadcast factor)``: a term broadcast to the output counts once
    per copy (the factor) in L2; in L-inf the concatenation's norm is the largest term's."""
    if norm == "linf":
        return max(v for v, _ in terms)
    return math.sqrt(sum((v * f) ** 2 for v, f in terms))


def _recompose(records, segments, chains, composed: dict, consumers) -> None:
    """Re-run the composed route with fused segments and ECLipsE chains (each a min with the plain step)."""
    fused_at = {s.output: s for s in segments if s.bound is not None}
    chain_at: dict = {}
    for c in chains:
        if c.upper is not None:
            chain_at.setdefault(c.output, []).append(c)
    for record in records:
        if not record.varying:
            continue
        value = propagate(record, composed)
        for n in record.outputs:
            if not n:
                continue
            if n in fused_at:
                s = fused_at[n]
                value = _min(value, _mul(s.bound.upper, composed.get(s.input)))
            for c in chain_at.get(n, []):
                value = _min(value, _mul(c.upper, composed.get(c.input)))
            composed[n] = value


# --------------------------------------------------------------------------------------------------------------
# per-pair bounds for certified radii


def pair_bounds(analysis: Analysis) -> np.ndarray | None:
    """``L[y, j]`` bounding the Lipschitz constant of ``f_y - f_j`` (logits), or None if the network is unbounded.

    The minimum of: ``sqrt(2) L`` (L2; ``2 L`` in L-inf) from the network bound; ``||m_y - m_j|| L(input of M)``
    when the output is produced by a fused linear segment with matrix M; and the ECLipsE-Fast pair bound when the
    output ends an ECLipsE chain (the last layer's rows replaced by their differences in the same certificate).
    """
    out = analysis.composed.get(analysis.output_name)
    if out is None:
        return None
    k = numel(analysis.output_shape)
    l2 = analysis.norm == "l2"
    bounds = np.full((k, k), constants.round_up(math.sqrt(2.0) * out) if l2 else 2.0 * out)
    for segment in analysis.segments:
        incoming = analysis.composed.get(segment.input)
        if segment.output != analysis.output_name or segment.matrix is None or incoming is None:
            continue
        rows = segment.matrix.numpy()
        diff = rows[:, None, :] - rows[None, :, :]
        # |(m_y - m_j) . dz| <= ||m_y - m_j||_2 ||dz||_2, or ||m_y - m_j||_1 ||dz||_inf
        norms = np.linalg.norm(diff, ord=2 if l2 else 1, axis=2)
        bounds = np.minimum(bounds, norms * incoming * (1 + 1e-9))
    for chain in analysis.chains:
        if chain.pairs is not None and chain.output == analysis.output_name:
            incoming = analysis.composed.get(chain.input)
            if incoming is not None:
                bounds = np.minimum(bounds, chain.pairs * incoming)
    np.fill_diagonal(bounds, 0.0)
    return bounds
