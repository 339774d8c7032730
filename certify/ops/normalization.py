"""Normalisations: BatchNormalization (inference), InstanceNormalization, LayerNormalization, GroupNormalization,
LRN and LpNormalization, each computed from its ONNX formula.

Scales, biases and statistics arrive as forward inputs (``graph.constant(name)`` gives them when they are weights).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from certify.errors import ModelRejected
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.constants import exact_constant, round_up, scale_bound, unbounded
from certify.ops import examples
from certify.ops.base import OnnxOp
from certify.ops.registry import register, schema_version


def per_channel(t: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel parameter shaped to broadcast over (N, C, spatial...) of the given rank.

    A 1-D parameter holds one value per channel; a parameter of more dimensions (BatchNormalization-7 with
    ``spatial=0``) holds one value per (channel, position) and broadcasts over the batch only.
    """
    if t.dim() <= 1:
        return t.reshape((1, -1) + (1,) * (rank - 2))
    return t.reshape((1, *t.shape))


def _normalized(x: torch.Tensor, dims, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) / sqrt(var + epsilon) over ``dims`` with the biased variance; also the mean and 1/std."""
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    inv_std = torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + epsilon)
    return centred * inv_std, mean, inv_std


def _stash_dtype(x: torch.Tensor, stash_type: int) -> torch.dtype:
    """Dtype the statistics are computed in: float32 for stash_type 1 unless the input is already wider."""
    if stash_type == 1 and x.dtype != torch.float64:
        return torch.float32
    return x.dtype


@register("BatchNormalization", versions=(7, None))
class BatchNormalization(OnnxOp):
    """Inference batch normalisation: y = scale * (x - mean) / sqrt(var + epsilon) + B, per channel.

    Fields: ``epsilon``, ``momentum`` (kept for completeness; used only in training). Training mode (batch
    statistics and running-statistics outputs) is refused: a certificate needs a fixed function of one input.
    """

    @classmethod
    def example(cls, op_type, rng):
        """Per-channel statistics of any scale (zero variance with a positive epsilon), any epsilon."""
        g = examples.Graph(rng, examples.spatial_input(rng, int(rng.integers(1, 4))))
        c = g.x_shape[1]
        epsilon = float(examples.pick(rng, [1e-5, 1e-2, 1.0, 0.0]))
        var = abs(examples.values(rng, (c,))) + (0.1 if epsilon == 0 else 0.0)
        params = [examples.values(rng, (c,)), examples.values(rng, (c,)), examples.values(rng, (c,)), var]
        out = g.node(op_type, ["x", *map(g.const, params)], epsilon=epsilon)
        return examples.Example(g.model(out), f"epsilon {epsilon:g}")

    def __init__(self, node):
        super().__init__(node)
        self.epsilon = float(node.attr("epsilon", 1e-5))
        self.momentum = float(node.attr("momentum", 0.9))
        self.training_mode = int(node.attr("training_mode", 0))
        if self.training_mode or any(node.outputs[1:]):
            raise ModelRejected(
                "unsupported_attribute",
                f"BatchNormalization {node.name}: training mode (batch statistics) is not supported, only inference",
            )

    def channel_affine(self, scale, bias, mean, var) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(multiplier, offset)`` with y = multiplier * x + offset."""
        multiplier = scale * torch.rsqrt(var + self.epsilon)
        return multiplier, bias - mean * multiplier

    def forward(self, x, scale, bias, mean, var):
        if x.dim() >= 2 and x.is_floating_point() and all(t.dtype == x.dtype for t in (scale, bias, mean, var)):
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=self.epsilon)
        multiplier, offset = self.channel_affine(scale, bias, mean, var)
        return x * per_channel(multiplier, x.dim()) + per_channel(offset, x.dim())

    def lipschitz(self, ctx):
        """Per-channel scale gamma / sqrt(var + eps), fused into a preceding conv."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "its parameters depend on the input")
        factor = batchnorm_scale(ctx.const(1), ctx.const(4), self.epsilon)
        channel_shape = (-1,) + (1,) * (len(ctx.in_shape) - 1) if factor.ndim <= 1 else factor.shape
        return rules.scale(ctx, torch.from_numpy(factor).reshape(channel_shape))


@register("InstanceNormalization", versions=(1, None))
class InstanceNormalization(OnnxOp):
    """y = scale * (x - mean) / sqrt(var + epsilon) + B, statistics per (sample, channel) over the spatial axes."""

    @classmethod
    def example(cls, op_type, rng):
        g = examples.Graph(rng, examples.spatial_input(rng, int(rng.integers(1, 4))))
        return examples.normalization(g, op_type, [(g.x_shape[1],)] * 2)

    def __init__(self, node):
        super().__init__(node)
        self.epsilon = float(node.attr("epsilon", 1e-5))

    def forward(self, x, scale, bias):
        if x.dim() < 3:
            raise ValueError(f"InstanceNormalization {self.onnx_name}: input of rank {x.dim()} has no spatial axes")
        normalized, _, _ = _normalized(x, tuple(range(2, x.dim())), self.epsilon)
        return normalized * per_channel(scale, x.dim()) + per_channel(bias, x.dim())

    def lipschitz(self, ctx):
        """max |gamma| / sqrt(eps) (``layernorm_bound``)."""
        return normalization_rule(ctx, self.epsilon)


@register("LayerNormalization", versions=(17, None))
class LayerNormalization(OnnxOp):
    """Normalise over the axes from ``axis`` on, then Y = normalised * Scale + B. Outputs Y, Mean, InvStdDev.

    Fields: ``axis``, ``epsilon``, ``stash_type`` (1: statistics in float32).
    """

    @classmethod
    def example(cls, op_type, rng):
        """Every axis (negative included), with and without a bias."""
        g = examples.Graph(rng, examples.shape(rng))
        axis = int(rng.integers(-len(g.x_shape), len(g.x_shape)))
        params = [g.x_shape[axis:]] * int(rng.integers(1, 3))
        return examples.normalization(g, op_type, params, axis=axis)

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", -1))
        self.epsilon = float(node.attr("epsilon", 1e-5))
        self.stash_type = int(node.attr("stash_type", 1))

    def forward(self, x, scale, bias=None):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if not 0 <= axis < x.dim():
            raise ValueError(f"LayerNormalization {self.onnx_name}: axis {self.axis} out of range for rank {x.dim()}")
        stats_input = x.to(_stash_dtype(x, self.stash_type))
        normalized, mean, inv_std = _normalized(stats_input, tuple(range(axis, x.dim())), self.epsilon)
        y = normalized.to(x.dtype) * scale
        if bias is not None:
            y = y + bias
        return y, mean, inv_std

    def lipschitz(self, ctx):
        """max |gamma| / sqrt(eps) (``layernorm_bound``)."""
        return normalization_rule(ctx, self.epsilon)


@register("GroupNormalization", versions=(18, None))
class GroupNormalization(OnnxOp):
    """Normalise each group of ``num_groups`` channel groups over its channels and spatial axes, then scale/shift.

    Fields: ``num_groups``, ``epsilon``, ``stash_type``, ``per_group_affine`` (opset 18: scale and bias hold one
    value per group; from opset 21 one per channel).
    """

    @classmethod
    def example(cls, op_type, rng):
        """Per-channel affine parameters (opset 21; the per-group form of opset 18 is deprecated), any divisor of
        the channels."""
        groups = int(rng.integers(1, 3))
        opset = 21
        g = examples.Graph(rng, examples.spatial_input(rng, groups * int(rng.integers(1, 3))), opset)
        params = [(groups,) if opset < 21 else (g.x_shape[1],)] * 2
        return examples.normalization(g, op_type, params, num_groups=groups)

    def __init__(self, node):
        super().__init__(node)
        self.num_groups = int(node.attr("num_groups", 0))
        if self.num_groups <= 0:
            raise ModelRejected("invalid_attribute", f"GroupNormalization {node.name}: num_groups must be > 0")
        self.epsilon = float(node.attr("epsilon", 1e-5))
        self.stash_type = int(node.attr("stash_type", 1))
        self.per_group_affine = (schema_version("GroupNormalization", node.opset) or 21) < 21

    def forward(self, x, scale, bias):
        n, c = x.shape[:2]
        if c % self.num_groups:
            raise ValueError(f"GroupNormalization {self.onnx_name}: {c} channels not divisible into {self.num_groups}")
        grouped = x.to(_stash_dtype(x, self.stash_type)).reshape(n, self.num_groups, -1)
        normalized, _, _ = _normalized(grouped, (2,), self.epsilon)
        normalized = normalized.reshape(x.shape).to(x.dtype)
        if self.per_group_affine:
            scale = scale.repeat_interleave(c // self.num_groups)
            bias = bias.repeat_interleave(c // self.num_groups)
        return normalized * per_channel(scale, x.dim()) + per_channel(bias, x.dim())

    def lipschitz(self, ctx):
        """max |gamma| / sqrt(eps) (``layernorm_bound``)."""
        return normalization_rule(ctx, self.epsilon)


@register("LRN", versions=(1, None))
class LRN(OnnxOp):
    """Local response normalisation across channels (ONNX formula, which pads the channel window differently
    from ``torch.nn.functional.local_response_norm`` for even sizes):

    square_sum[c] = sum of x[c']^2 for c' in [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)],
    y = x / (bias + alpha / size * square_sum) ** beta.

    Fields: ``size``, ``alpha``, ``beta``, ``bias``.
    """

    #: Maps each spatial position's channels on their own (``certify.lipschitz.pooled``).
    per_position = True

    @classmethod
    def example(cls, op_type, rng):
        """Odd and even window sizes, alpha, beta and bias anywhere (bias > 0 keeps the base positive)."""
        attrs = {"alpha": examples.real(rng), "beta": examples.real(rng), "bias": abs(examples.real(rng)) + 0.1}
        return examples.unary(op_type, rng, examples.attribute_family(attrs), size=int(rng.integers(1, 5)),
                              per_sample=examples.spatial_input(rng, int(rng.integers(1, 5))), **attrs)

    def __init__(self, node):
        super().__init__(node)
        self.size = int(node.attr("size", 0))
        if self.size <= 0:
            raise ModelRejected("invalid_attribute", f"LRN {node.name}: size must be > 0")
        self.alpha = float(node.attr("alpha", 1e-4))
        self.beta = float(node.attr("beta", 0.75))
        self.bias = float(node.attr("bias", 1.0))

    def channel_window(self) -> tuple[int, int]:
        """How many channels before and after a channel its window covers."""
        return (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2

    def forward(self, x):
        before, after = self.channel_window()
        squares = (x * x).movedim(1, -1)
        padded = F.pad(squares, (before, after))
        square_sum = sum(padded[..., i : i + x.shape[1]] for i in range(self.size)).movedim(-1, 1)
        return x / (self.bias + self.alpha / self.size * square_sum) ** self.beta

    def lipschitz(self, ctx):
        """The closed-form bound of ``lrn_bound``."""

        return lrn_bound(self.size, self.alpha, self.beta, self.bias, ctx.norm)


@register("LpNormalization", versions=(1, None))
class LpNormalization(OnnxOp):
    """y = x / ||x||_p along ``axis`` (p is 1 or 2), 0 where the norm is 0. Fields: ``axis``, ``p``."""

    @classmethod
    def example(cls, op_type, rng):
        per_sample = examples.shape(rng)
        return examples.unary(op_type, rng, per_sample=per_sample, p=int(rng.integers(1, 3)),
                              axis=int(rng.integers(-len(per_sample) - 1, len(per_sample) + 1)))

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", -1))
        self.p = int(node.attr("p", 2))
        if self.p not in (1, 2):
            raise ModelRejected("invalid_attribute", f"LpNormalization {node.name}: p must be 1 or 2, got {self.p}")

    def forward(self, x):
        norm = x.abs().sum(dim=self.axis, keepdim=True) if self.p == 1 else x.pow(2).sum(self.axis, keepdim=True).sqrt()
        # A zero norm means every entry is zero: divide by 1 instead, which gives the 0 ONNX specifies.
        return x / torch.where(norm == 0, torch.ones_like(norm), norm)

    def lipschitz(self, ctx):
        """x / ||x|| is not Lipschitz near 0."""
        from certify.lipschitz import rules

        return rules.unbounded(ctx, "x / ||x|| has no Lipschitz constant near 0")


def normalization_rule(ctx, epsilon: float):
    """Layer / instance / group normalisation: max|gamma| / sqrt(eps) (see ``layernorm_bound``)."""
    from certify.lipschitz import rules

    if ctx.varying_inputs != [0]:
        return rules.unbounded(ctx, "its scale depends on the input")
    if sum(s is not None for s in ctx.output_shapes) > 1:
        return rules.unbounded(ctx, "its statistics outputs (mean, inverse std) are used")
    gamma = ctx.const(1)
    gamma = None if gamma is None else gamma.double().numpy()
    return layernorm_bound(rules.numel(ctx.in_shape), gamma, epsilon, ctx.norm)


# --------------------------------------------------------------------------------------------------------------
# bounds (Lipschitz constants of this family; ``certify.lipschitz`` composes them)


def batchnorm_scale(gamma, var, eps: float) -> np.ndarray:
    """Per-channel slope ``gamma / sqrt(var + eps)`` of inference BatchNorm (float64 from the stored params)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # var + eps <= 0 is reported by the bound, not warned
        return gamma / np.sqrt(var + float(eps))


def batchnorm_bound(gamma, var, eps: float, norm: str = "l2") -> LayerBound:
    """BatchNorm when it is not fused into the preceding convolution: max |gamma| / sqrt(var + eps)."""
    return scale_bound(batchnorm_scale(gamma, var, eps), norm)


def lrn_bound(size: int, alpha: float, beta: float, bias: float, norm: str = "l2") -> LayerBound:
    """Local response normalisation ``y_c = x_c / S_c^beta``, ``S_c = k + (alpha/n) sum_{j in N(c)} x_j^2``.

    Derivation of a guaranteed bound on ``sup ||J||`` (k = bias > 0, beta > 0, alpha > 0, n = size, channel
    windows N(c) of n channels). With ``w = sqrt(alpha/n) x`` and ``t_c = sum_{N(c)} w_j^2 = S_c - k``::

        J = D - 2 beta E,  D = diag(S_c^-beta),  E_cj = S_c^(-beta-1) w_c w_j [j in N(c)].

    ``||D|| <= k^-beta``. For unit v, Cauchy-Schwarz gives ``|(E v)_c| <= S_c^(-beta-1) |w_c| sqrt(t_c) ||v_N(c)||
    <= g(S_c) ||v_N(c)||`` with ``g(S) = (S - k) S^(-beta-1)`` (as ``w_c^2 <= t_c``), and ``g`` peaks at
    ``S = k (beta+1)/beta`` with ``g* = k^-beta beta^beta / (beta+1)^(beta+1)``. Every channel lies in at most n
    windows, so ``||E v||^2 <= g*^2 n``. Hence::

        ||J|| <= k^-beta (1 + 2 sqrt(n) (beta / (beta+1))^(beta+1)).

    The same bound holds for the L-inf row sums (``|w_c| sum_{N(c)} |w_j| <= sqrt(n) t_c``). At x = 0 the Jacobian
    is ``k^-beta I``: that is the lower bound. For AlexNet (n=5, beta=0.75, k=1) the bound is about 2.015.
    """
    if bias > 0 and beta == 0:
        return exact_constant(1.0, method="lrn (identity)", norm=norm)
    if not (bias > 0 and beta > 0 and alpha >= 0 and size >= 1):  # alpha < 0: S_c reaches 0 at finite x
        return unbounded(f"LRN with alpha={alpha}, bias={bias}, beta={beta}: the denominator can vanish", norm)
    if beta * math.log(1.0 / bias) > 700:  # k^-beta beyond float64
        return unbounded(f"LRN with bias={bias}, beta={beta}: the slope bias^-beta overflows", norm)
    if alpha == 0:  # y = x / k^beta
        return exact_constant(bias**-beta, method="lrn (scale)", norm=norm)
    base = bias**-beta
    value = base * (1 + 2 * math.sqrt(size) * (beta / (beta + 1)) ** (beta + 1))
    return LayerBound(upper=round_up(value), lower=base, method="lrn closed form", norm=norm)


def layernorm_bound(axis_size: int, scale, eps: float, norm: str = "l2") -> LayerBound:
    """LayerNorm ``y = gamma (x - mean) / sqrt(var + eps)``: its Jacobian at centred x with variance ~0 is
    ``gamma (I - 11^T/n) / sqrt(eps)``, so ``max|gamma| / sqrt(eps)`` is approached; a guaranteed bound is
    ``max|gamma| / sqrt(eps)`` (the projection has norm 1 and the normalisation only shrinks it further:
    ``J = (gamma/sigma) (P - u u^T)`` with ``P`` the centring projection, ``u`` the normalised centred x, and
    ``||P - uu^T|| <= 1``). Tiny eps makes it useless; below 1e-12 it is reported as unbounded."""
    if eps <= 1e-12:
        return unbounded(f"LayerNorm with eps={eps}: slope 1/sqrt(eps) is effectively unbounded", norm)
    gamma = np.abs(np.asarray(scale if scale is not None else 1.0, dtype=np.float64))
    value = float(gamma.max()) / math.sqrt(eps)
    if norm == "linf":  # ||P||_inf <= 2 and ||c u u^T||_inf <= max|u_i| ||u||_1 <= sqrt(n)
        return LayerBound(upper=round_up(value * (2.0 + math.sqrt(axis_size))), lower=None,
                          method="layernorm closed form", norm=norm)
    return LayerBound(upper=round_up(value), lower=value, method="layernorm closed form", exact=True, norm=norm)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): inference batch normalisation is a per-channel affine map."""
    from certify.local.rules import Linear

    BatchNormalization.relaxation = Linear(fixed=(1, 2, 3, 4), absolute=(1,))


_relaxations()
