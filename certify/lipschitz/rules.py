"""The vocabulary of the operators' bound rules: what a rule may read about its node, and what it answers.

Every operator answers ``op.lipschitz(ctx)`` (``certify.ops``) with either a :class:`LayerBound` (its own
constant), a :class:`Linear` marker (the node is affine in its one varying input; it is bounded alone and fused with
its linear neighbours by :mod:`certify.lipschitz.segments`), an :class:`Activation` (an elementwise map with a
slope range, for ECLipsE), a :class:`Combine` marker (residual sums, concatenations of varying tensors) or None (no
rule: reported unbounded). ``ctx`` is a :class:`LipschitzContext`. The helpers below are the rules shared by several
operators (a constant scale, a translation, a data selection...); no rule here is keyed on an operator's name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.lipschitz import constants
from certify.lipschitz.bound import LayerBound


@dataclass
class Linear:
    """Marker: the node is affine in its one varying input.

    kind: ``"dense"`` (``weight`` (out, in) acting on the input's last axis), ``"conv"`` (``weight`` is the kernel,
    ``conv`` holds stride, padding (ONNX begin..., end...), dilation, groups, transposed, output_padding),
    ``"scale"`` (``x * scale``, ``scale`` broadcastable to the per-sample input), ``"isometry"`` (reshapes,
    transposes, identity, dropout at inference, adding a constant: norm 1) or ``"bounded"`` (``bound`` is the
    node's own bound, e.g. average pooling).
    """

    kind: str
    weight: torch.Tensor | None = None
    conv: dict | None = None
    scale: torch.Tensor | None = None
    bound: LayerBound | None = None


@dataclass
class Activation:
    """Marker for an elementwise activation: its slope range (for ECLipsE) and its bound."""

    slope: constants.Slope | None
    bound: LayerBound


def finite_attributes(op_type: str, attrs: dict) -> None:
    """A non-finite numeric attribute is an error (:class:`constants.NonFiniteBound`), never a slope."""
    for name, value in attrs.items():
        if isinstance(value, (int, float, np.ndarray)) and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise constants.NonFiniteBound(f"{op_type}: attribute {name} is not finite ({value})")


def slope_bound(slope: constants.Slope | None, norm: str, reason: str, searched: bool = False) -> LayerBound:
    """Bound of an elementwise map with derivative range ``slope`` (None: not Lipschitz, for ``reason``): the same
    in L2 and L-inf (the Jacobian is diagonal). ``searched``: the range came from a grid search, so the attained
    lower bound keeps the search margin below it."""
    started = time.perf_counter()
    if slope is None:
        return constants.unbounded(reason, norm)
    value = slope.lipschitz
    lower = value - 2 * constants.SEARCH_MARGIN if searched else value
    return LayerBound(upper=value, lower=lower, method="constant", exact=True, norm=norm,
                      ms=(time.perf_counter() - started) * 1e3)


def activation(ctx: LipschitzContext, slope: constants.Slope | None, reason: str, searched: bool = False) -> Activation:
    """The rule of a scalar activation with derivative range ``slope``."""
    return Activation(slope, slope_bound(slope, ctx.norm, reason, searched))


@dataclass
class Combine:
    """Marker for nodes joining several varying tensors: ``"sum"`` (Add, Sub, Sum, Mean: sum of the broadcast
    terms' bounds), ``"concat"`` (Concat: root-sum-square) or ``"max"`` (Max, Min, Where: elementwise selections,
    root-sum-square of the broadcast terms); ``scale`` multiplies the result (Mean)."""

    kind: str
    scale: float = 1.0


@dataclass
class LipschitzContext:
    """What a rule may read about its node. Shapes are per sample (batch dimension dropped) from a forward pass
    at batch 1; ``constants[i]`` is input i's value when it does not depend on the network input, else None."""

    norm: str
    node: str
    op_type: str
    input_shapes: list
    output_shapes: list
    constants: list
    input_dtypes: list = field(default_factory=list)  # torch dtype of every input (None when absent)

    def varying(self, index: int) -> bool:
        return index < len(self.constants) and self.input_shapes[index] is not None and self.constants[index] is None

    def const(self, index: int) -> torch.Tensor | None:
        return self.constants[index] if index < len(self.constants) else None

    @property
    def varying_inputs(self) -> list[int]:
        return [i for i in range(len(self.constants)) if self.varying(i)]

    @property
    def in_shape(self) -> tuple:
        """Per-sample shape of the first varying input."""
        return tuple(self.input_shapes[self.varying_inputs[0]])

    @property
    def out_shape(self) -> tuple:
        return tuple(self.output_shapes[0])


def per_sample(shape) -> tuple:
    return tuple(int(d) for d in shape[1:])


def numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


# --------------------------------------------------------------------------------------------------------------
# rule helpers the operators' ``lipschitz`` methods call


def unbounded(ctx: LipschitzContext, why: str) -> LayerBound:
    return constants.unbounded(f"{ctx.op_type} {ctx.node}: {why}", ctx.norm)


def product_of_varying(ctx: LipschitzContext) -> LayerBound:
    return unbounded(ctx, "product of two input-dependent tensors has no global Lipschitz constant")


def zero(ctx: LipschitzContext) -> LayerBound:
    """Outputs that do not depend on the input's values (Shape, Size)."""
    return constants.exact_constant(0.0, method="value-independent", norm=ctx.norm)



def copies_factor(copies: float, norm: str) -> float:
    """Norm of copying every entry ``copies`` times: sqrt(copies) in L2, 1 in L-inf."""
    return 1.0 if norm == "linf" else math.sqrt(copies)


def translation(ctx: LipschitzContext) -> Linear:
    """Adding a constant: an isometry, unless broadcasting copies the varying input (then sqrt(copies))."""
    copies = numel(ctx.out_shape) / max(numel(ctx.in_shape), 1)
    if copies == 1:
        return Linear("isometry")
    return Linear("bounded", bound=constants.exact_constant(copies_factor(copies, ctx.norm), method="broadcast",
                                                            norm=ctx.norm))


def dense(ctx: LipschitzContext, weight: torch.Tensor) -> Linear:
    """``x -> x @ weight^T`` along the last axis, ``weight`` (out, in)."""
    return Linear("dense", weight=weight.detach().double())


def scale(ctx: LipschitzContext, factor: torch.Tensor) -> Linear | LayerBound:
    """``x * factor`` for a constant factor; when broadcasting copies x, the copies add sqrt(copies)."""
    factor = torch.as_tensor(factor).detach().double()
    copies = numel(ctx.out_shape) / max(numel(ctx.in_shape), 1)
    if copies == 1 and factor.dim() <= len(ctx.in_shape) + 1:
        shape = factor.shape[1:] if factor.dim() == len(ctx.in_shape) + 1 else factor.shape
        return Linear("scale", scale=factor.reshape(shape))
    value = float(factor.abs().max()) * copies_factor(copies, ctx.norm)
    return Linear("bounded", bound=LayerBound(upper=constants.round_up(value), lower=None, method="broadcast scale",
                                             norm=ctx.norm))


def selection(ctx: LipschitzContext, module) -> Linear:
    """Ops that only copy entries (Slice, Gather with constant indices, Pad, Tile, Expand, nearest Resize,
    Transpose...): run the op once on an index-coded input (entry i = i + 1, in float64, exact), count how often
    each input entry appears in the output; ``sqrt(max count)`` is the exact L2 norm (1 in L-inf)."""
    index = ctx.varying_inputs[0]
    n = numel(ctx.in_shape)
    coded = torch.arange(1, n + 1, dtype=torch.float64).reshape(1, *ctx.in_shape) + 0.5
    args = [coded if i == index else _as_double(ctx.const(i)) for i in range(len(ctx.constants))]
    with torch.no_grad():
        out = module(*args)
    # every output counts (Split): a bound from the first part alone is 0 when that part is empty
    out = torch.cat([o.reshape(-1) for o in out]) if isinstance(out, (tuple, list)) else out.reshape(-1)
    picked = out[(out == out.floor() + 0.5) & (out >= 1.5) & (out <= n + 0.5)]
    counts = torch.bincount((picked - 1.5).round().long(), minlength=n) if picked.numel() else torch.zeros(1)
    return Linear("bounded", bound=constants.selection_bound(int(counts.max()), ctx.norm))


def _as_double(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def separable(ctx: LipschitzContext, matrices) -> Linear:
    """A linear op acting as one matrix per axis (Resize): the norm is the product of the per-axis norms."""
    upper = lower = 1.0
    for m in matrices:
        m = np.asarray(m, dtype=np.float64)
        value = float(np.abs(m).sum(axis=1).max()) if ctx.norm == "linf" else float(np.linalg.norm(m, 2))
        upper *= constants.round_up(value, 1e-12 * sum(m.shape))
        lower *= value
    return Linear("bounded", bound=LayerBound(upper=constants.round_up(upper), lower=lower * (1 - 1e-12),
                                             method="per-axis svd", exact=True, norm=ctx.norm))
