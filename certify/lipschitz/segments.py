"""Fused linear segments: runs of linear nodes (Conv, BatchNorm, Gemm chains, reshapes in between) bounded as one
operator, so ``||A B|| <= ||A|| ||B||`` is replaced by the norm of the product itself.

A segment small enough is materialised as an explicit matrix (its images of the identity basis); a Conv followed
by per-channel scales is folded into one Conv; otherwise the product of its members' bounds stands. Every fused
bound is the minimum with that product.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from certify.lipschitz import constants
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.rules import Linear, LipschitzContext, numel

#: Largest segment turned into an explicit matrix by running it on the identity basis (inputs, entries).
EXPLICIT_MAX_INPUTS = 4096
EXPLICIT_MAX_ENTRIES = 1 << 23


def linear_bound(rule: Linear, in_shape: tuple, norm: str) -> LayerBound:
    """The bound of one linear node on its own."""
    from certify.lipschitz import linear_norms

    started = time.perf_counter()
    if rule.kind == "dense":
        bound = linear_norms.dense_bound(rule.weight.detach().double(), norm=norm)
    elif rule.kind == "conv":
        c = rule.conv
        bound = linear_norms.conv_bound(rule.weight.detach().double(), tuple(in_shape), stride=c["stride"],
                                        padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                                        transposed=c.get("transposed", False),
                                        output_padding=c.get("output_padding"), norm=norm)
    elif rule.kind == "scale":
        bound = constants.scale_bound(rule.scale.detach().double().numpy(), norm)
    elif rule.kind == "isometry":
        bound = constants.exact_constant(1.0, method="isometry", norm=norm)
    elif rule.kind == "bounded":
        bound = copy.copy(rule.bound)
    else:
        raise ValueError(f"unknown linear kind {rule.kind!r}")
    bound.ms = bound.ms or (time.perf_counter() - started) * 1e3
    return bound


@dataclass
class NodeRecord:
    """One runtime node: its rule, its own bound and where it was fused."""

    index: int
    module: torch.nn.Module
    inputs: list[str]
    outputs: list[str]
    ctx: LipschitzContext
    rule: object
    bound: LayerBound | None = None  # the node alone
    varying: list[str] = field(default_factory=list)  # names of varying inputs
    segment: Segment | None = None


@dataclass
class Segment:
    """Consecutive linear nodes fused into one operator (first input -> last output)."""

    members: list[NodeRecord]
    bound: LayerBound | None = None
    matrix: torch.Tensor | None = None  # explicit (out, in) float64 matrix of the linear part, when affordable

    @property
    def input(self) -> str:
        return self.members[0].varying[0]

    @property
    def output(self) -> str:
        return self.members[-1].outputs[0]

    @property
    def in_shape(self) -> tuple:
        return self.members[0].ctx.in_shape

    @property
    def out_shape(self) -> tuple:
        return self.members[-1].ctx.out_shape


def _segment_runner(segment: Segment, env: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float64 function on a batch of per-sample inputs computing the segment's linear part (affine minus its
    value at 0). Each sample runs at the batch of ``env`` (vmap): 1, or the fixed batch of a graph that reshapes by
    it, filled with copies of the sample (such a graph keeps its samples apart, see :mod:`certify.lipschitz.batch`),
    so reshapes to a fixed batch stay correct."""
    modules = [copy.deepcopy(r.module).double() for r in segment.members]
    size = env[segment.members[0].varying[0]].shape[0]

    def as64(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    fixed = [[None if (not n or n == r.varying[0]) else as64(env[n]) for n in r.inputs] for r in segment.members]

    def run_one(v: torch.Tensor) -> torch.Tensor:
        x = v.unsqueeze(0).expand(size, *v.shape)
        for module, record, args in zip(modules, segment.members, fixed):
            x = module(*[x if n == record.varying[0] else a for n, a in zip(record.inputs, args)])
            x = x[0] if isinstance(x, (tuple, list)) else x
        return x[0] if size > 1 else x.squeeze(0)

    zero_in = torch.zeros(segment.in_shape, dtype=torch.float64)
    zero_out = run_one(zero_in).detach()

    def linear_part(t: torch.Tensor) -> torch.Tensor:
        """The derivative at 0 in direction ``t`` (forward mode): the linear part itself, never formed as
        f(t) - f(0), whose cancellation against a large bias loses the small entries."""
        return torch.func.jvp(run_one, (zero_in,), (t,))[1]

    def batched(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        for method in (lambda: torch.func.vmap(linear_part)(v), lambda: torch.stack([linear_part(s) for s in v])):
            try:
                return method()
            except Exception:  # an operator vmap or forward mode cannot trace: the next way
                continue
        return torch.stack([run_one(s) for s in v]) - zero_out

    return batched


def _core(segment: Segment) -> list[NodeRecord]:
    """The members that are not reshapes (reshapes keep the row-major order and the norm)."""
    return [r for r in segment.members if r.rule.kind != "isometry"]


def _explicit_matrix(segment: Segment, runner) -> torch.Tensor | None:
    """The segment's (out, in) matrix on flattened tensors: a lone dense weight, or the images of the basis."""
    core = _core(segment)
    if len(core) == 1 and core[0].rule.kind == "dense" and len(core[0].ctx.in_shape) == 1:
        return core[0].rule.weight.detach().double()
    if len(core) <= 1 or runner is None:
        return None  # a lone conv / pooling is already bounded on its own
    n_in, n_out = numel(segment.in_shape), numel(segment.out_shape)
    if n_in > EXPLICIT_MAX_INPUTS or n_in * n_out > EXPLICIT_MAX_ENTRIES:
        return None
    columns = []
    eye = torch.eye(n_in, dtype=torch.float64)
    with torch.no_grad():
        for chunk in eye.split(512):
            columns.append(runner(chunk.reshape(-1, *segment.in_shape)).reshape(chunk.shape[0], -1))
    return torch.cat(columns).T.contiguous()


def _folded_conv(segment: Segment) -> Linear | None:
    """Conv followed by per-channel scales (inference BatchNorm, Mul by a per-channel constant) as one conv."""
    members = _core(segment)
    if not members or members[0].rule.kind != "conv" or segment.members[:len(members)] != members:
        return None  # only a conv first, then per-channel scales, then (optionally) reshapes
    weight = members[0].rule.weight.detach().double().clone()
    for r in members[1:]:
        if r.rule.kind != "scale":
            return None
        channels = _channel_scale(r.rule.scale.detach().double(), r.ctx.in_shape)
        if channels is None or channels.numel() not in (1, weight.shape[0]):
            return None
        weight = weight * channels.reshape(-1, *([1] * (weight.dim() - 1)))
    return Linear("conv", weight=weight, conv=members[0].rule.conv)


def _channel_scale(scale: torch.Tensor, in_shape: tuple) -> torch.Tensor | None:
    """The per-channel factors of ``x * scale`` on a (C, *spatial) tensor, or None when ``scale`` varies along
    another axis. Broadcasting aligns trailing axes: a (C,) scale multiplies the LAST axis, only a (C, 1, ..., 1)
    one (or a scalar) multiplies channels."""
    if scale.dim() > len(in_shape):
        return None
    aligned = (1,) * (len(in_shape) - scale.dim()) + tuple(scale.shape)
    if any(d != 1 for d in aligned[1:]) or aligned[0] not in (1, in_shape[0]):
        return None
    return scale.reshape(-1)


def bound_segment(segment: Segment, env: dict, norm: str) -> None:
    """Fuse and bound a segment; the result never exceeds the product of its members' bounds."""
    from certify.lipschitz import linear_norms

    started = time.perf_counter()
    product = 1.0
    for r in segment.members:
        product *= r.bound.upper
    core = _core(segment)
    if len(core) <= 1:  # reshapes around one operator keep its norm (and its achieved lower bound)
        segment.matrix = _explicit_matrix(segment, None)
        fused = copy.copy(core[0].bound if core else segment.members[0].bound)
        if len(segment.members) > 1:
            fused.method = f"fused {fused.method}"
            fused.ms = (time.perf_counter() - started) * 1e3
        segment.bound = fused
        return
    runner = _segment_runner(segment, env)
    try:
        segment.matrix = _explicit_matrix(segment, runner)
    except Exception:  # an operator that cannot run in float64: bound without the explicit matrix
        segment.matrix = None
    fused = None
    if segment.matrix is not None:
        fused = linear_norms.dense_bound(segment.matrix, norm=norm)
        fused.method = f"fused {fused.method}"
    else:
        conv = _folded_conv(segment)
        if conv is not None:
            fused = linear_bound(conv, segment.in_shape, norm)
            fused.method = f"fused {fused.method}"
    if fused is None or fused.upper is None or fused.upper > product:  # keep the achieved lower bound
        lower = None if fused is None else fused.lower
        fused = LayerBound(upper=product, lower=lower, method="product of fused nodes", norm=norm)
    if fused.lower is None and norm == "l2":
        value, _ = linear_norms.linear_operator_lower(runner, segment.in_shape, iters=12, seed=0,
                                                      dtype=torch.float64)
        fused.lower = min(float(value), fused.upper)
    fused.ms = (time.perf_counter() - started) * 1e3
    segment.bound = fused



def _linear_single(record: NodeRecord, consumers: dict, graph_outputs) -> bool:
    """A linear node with one varying input whose only used output is its first (Dropout's unused mask is fine)."""
    used = [n for n in record.outputs[1:] if n and (consumers.get(n) or n in graph_outputs)]
    return (isinstance(record.rule, Linear) and len(record.varying) == 1 and not used
            and record.bound.upper is not None)


def find_segments(records, consumers, graph_outputs) -> list[Segment]:
    """Maximal runs of linear nodes whose intermediate tensors feed only the next node."""
    by_tail: dict[str, Segment] = {}
    segments: list[Segment] = []
    for record in records:
        if not _linear_single(record, consumers, graph_outputs):
            continue
        source = record.varying[0]
        previous = by_tail.pop(source, None)
        if previous is not None and consumers.get(source, 0) == 1 and source not in graph_outputs:
            previous.members.append(record)
            segment = previous
        else:
            if previous is not None:
                by_tail[source] = previous
            segment = Segment([record])
            segments.append(segment)
        record.segment = segment
        by_tail[record.outputs[0]] = segment
    return segments
