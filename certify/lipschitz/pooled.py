"""A convolution, position-wise nonlinearities and a max-pooling bounded as one block, instead of the product of
the convolution's norm, theirs and the pooling's ``sqrt(max windows per input)``.

Max-pooling. For each window W, ``|max u_W - max u'_W| <= max_{j in W} |u_j - u'_j|``, so
``||dz||^2 <= sum_W max_W du_j^2 <= sum_j c_j du_j^2`` with ``c_j`` the number of windows reading position j: the
pooling costs the weighted norm ``||diag(sqrt c) du||``, not ``sqrt(max c) ||du||``. Along each axis ``c_j`` depends
only on ``j mod stride`` (taken over all integer windows, which bounds any finite or padded set of them), and the
spatial weight is the product over axes.

Between the convolution and the pooling. An elementwise activation (``|du_j| <= beta |dv_j|``) and an operator
acting on each spatial position's channels separately (``per_position`` on its class, bound L: every position's map
is L-Lipschitz, as the whole map is a direct sum of them) keep the weighted norm, times their bounds: the weight is
one scalar per position.

The weighted convolution. ``diag(sqrt c) C``, with c periodic of period s (the pooling stride) on C's output, is a
space-to-depth convolution: one output channel per (channel, output phase a) whose kernel is C's shifted by
``stride_C * a`` and scaled by ``sqrt c_a``, with stride ``stride_C * s``, bounded by the certified convolution norm
(`certify.lipschitz.linear_norms.conv_bound`). Outputs past C's own (phases of the last row) only add rows. The
scaled kernel is rounded: the weights are rounded up (a larger weight only loosens) and the rounding of the
products is bounded by ``u sqrt(max row sum * max column sum)`` of the kernel's magnitudes (Schur's test).
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from certify.lipschitz.gram import U64, round_up
from certify.lipschitz.segments import NodeRecord, Segment, _folded_conv


def phase_weights(geometry: tuple) -> torch.Tensor:
    """Per spatial axis of the pooling's input, the number of windows reading a position in each residue class
    modulo the pooling stride (its product over axes is the weight c), shaped (s_1, ..., s_d)."""
    _, _, kernel, strides, pads, dilations = geometry
    axes = []
    for k, s, pad, d in zip(kernel, strides, pads, dilations):
        axes.append(torch.tensor([sum((a + pad - d * t) % s == 0 for t in range(k)) for a in range(s)],
                                 dtype=torch.float64))
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights.unsqueeze(-1) * axis
    return weights


def space_to_depth(conv, phases: torch.Tensor, in_shape: tuple) -> tuple[torch.Tensor, dict]:
    """The kernel and geometry of ``diag(sqrt c) C`` as one strided convolution (weights rounded up)."""
    from certify.lipschitz.conv import normalize_conv

    c = conv.conv
    geom = normalize_conv(conv.weight.detach().double(), in_shape, stride=c["stride"], padding=c["padding"],
                          dilation=c["dilation"], groups=c["groups"])
    weight, stride, dilation = geom.weight, geom.stride, geom.dilation
    period = list(phases.shape)
    taps = [s * (p - 1) + d * (k - 1) + 1 for s, p, d, k in zip(stride, period, dilation, weight.shape[2:])]
    count = math.prod(period)
    out = weight.new_zeros((weight.shape[0], count, weight.shape[1], *taps))
    for index, phase in enumerate(itertools.product(*[range(p) for p in period])):
        scale = round_up(math.sqrt(float(phases[phase])))
        region = [slice(s * a, s * a + d * (k - 1) + 1, d)
                  for s, a, d, k in zip(stride, phase, dilation, weight.shape[2:])]
        out[(slice(None), index, slice(None), *region)] = weight * scale
    new_stride = [s * p for s, p in zip(stride, period)]
    ends = []
    for axis, (n, n_out, begin, end) in enumerate(zip(in_shape[1:], geom.output_spatial, geom.pads_begin,
                                                      geom.pads_end)):
        rows = -(-n_out // period[axis])
        ends.append(max(end, (rows - 1) * new_stride[axis] + taps[axis] - n - begin))
    geometry = {"stride": new_stride, "padding": list(geom.pads_begin) + ends, "dilation": [1] * len(period),
                "groups": geom.groups}
    return out.reshape(weight.shape[0] * count, weight.shape[1], *taps), geometry


def rounding_term(kernel: torch.Tensor, groups: int) -> float:
    """``u sqrt(R C)``: a bound of the norm of the convolution by the kernel's rounding errors (each at most u times
    the entry), from the largest row sum R and column sum C of the magnitudes (Schur's test)."""
    mags = kernel.abs()
    rows = float(mags.flatten(1).sum(dim=1).max())
    per_group = mags.shape[0] // groups
    cols = max(float(mags[g * per_group:(g + 1) * per_group].sum(dim=0).flatten(1).sum(dim=1).max())
               for g in range(groups))
    return round_up(round_up(U64 * math.sqrt(round_up(rows * cols))) * (1.0 + 4.0 * U64))


def weighted_conv_bound(conv, phases: torch.Tensor, in_shape: tuple) -> float | None:
    """A guaranteed bound of ``||diag(sqrt c) C||`` (None when the convolution norm has none)."""
    from certify.lipschitz import linear_norms

    kernel, geometry = space_to_depth(conv, phases, in_shape)
    bound = linear_norms.conv_bound(kernel, tuple(in_shape), stride=geometry["stride"], padding=geometry["padding"],
                                    dilation=geometry["dilation"], groups=geometry["groups"])
    if bound.upper is None:
        return None
    return round_up(bound.upper + rounding_term(kernel, geometry["groups"]))


def _block(pool: NodeRecord, producers: dict, segments_at: dict, private) -> tuple[Segment, list, float] | None:
    """The segment and position-wise nodes feeding ``pool`` (each tensor private), with their bounds' product."""
    from certify.lipschitz.eclipse import _is_activation

    middle, factor, name = [], 1.0, pool.varying[0]
    while name not in segments_at:
        record = producers.get(name)
        if record is None or not private(name) or len(record.varying) != 1 or record.bound.upper is None:
            return None
        if not (_is_activation(record) or getattr(record.module, "per_position", False)):
            return None
        if tuple(record.ctx.in_shape) != tuple(record.ctx.out_shape):
            return None
        middle.insert(0, record)
        factor *= record.bound.upper
        name = record.varying[0]
    segment = segments_at[name]
    return (segment, middle, factor) if private(name) else None


def bound_pool_blocks(records, segments, consumers, graph_outputs, deadline: float | None = None,
                      skipped: list | None = None) -> list:
    """Every block convolution segment, position-wise nodes, max-pooling (``max_over_windows`` on the pooling's
    class) bounded jointly, as ``eclipse.Chain`` objects (method "pooled convolution") where below the product.
    Poolings reached after ``deadline`` (``time.monotonic``) keep the product and are appended to ``skipped``."""
    from certify.lipschitz.eclipse import Chain

    producers = {r.outputs[0]: r for r in records if r.outputs and r.outputs[0]}
    segments_at = {s.output: s for s in segments if s.bound is not None and s.bound.upper is not None}

    def private(name: str) -> bool:
        return consumers.get(name, 0) == 1 and name not in graph_outputs

    found = []
    for pool in records:
        if not getattr(pool.module, "max_over_windows", False) or len(pool.varying) != 1 or pool.bound is None:
            continue
        if deadline is not None and time.monotonic() > deadline:
            (skipped if skipped is not None else []).append(pool)
            continue
        started = time.perf_counter()
        block = _block(pool, producers, segments_at, private)
        conv = None if block is None else _folded_conv(block[0])
        if conv is None or conv.conv.get("transposed") or tuple(block[0].out_shape) != tuple(pool.ctx.in_shape):
            continue
        segment, middle, factor = block
        phases = phase_weights(pool.module.pool_geometry(pool.ctx))
        if float(phases.min()) == float(phases.max()):
            continue  # a uniform weight (windows that tile, as 2x2 stride 2): the block is the product itself
        weighted = weighted_conv_bound(conv, phases, segment.in_shape)
        if weighted is None:
            continue
        value = weighted
        for record in middle:
            value = round_up(value * record.bound.upper)
        if value < segment.bound.upper * factor * pool.bound.upper:
            found.append(Chain([segment, *middle, pool], upper=value, ms=(time.perf_counter() - started) * 1e3,
                               method="pooled convolution"))
    return found
