"""The network's Lipschitz bound: one rule per ONNX node, fused linear segments, composition along the DAG.

Every operator answers ``module.lipschitz(ctx)`` with either a :class:`LayerBound` (its own constant), a
:class:`Linear` marker (the node is affine in its one varying input; it is bounded here, alone and fused with its
linear neighbours), a :class:`Combine` marker (residual sums, concatenations of varying tensors) or None (no rule:
reported unbounded). ``ctx`` is a :class:`LipschitzContext`.

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

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.lipschitz import constants
from certify.lipschitz.bound import LayerBound

#: Largest segment turned into an explicit matrix by running it on the identity basis (inputs, entries).
EXPLICIT_MAX_INPUTS = 4096
EXPLICIT_MAX_ENTRIES = 1 << 23


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


def activation(op_type: str, ctx: LipschitzContext, **attrs) -> Activation:
    """The rule of a scalar activation with ONNX attributes ``attrs`` (see :func:`constants.activation_slope`)."""
    return Activation(constants.activation_slope(op_type, **attrs),
                      constants.activation_bound(op_type, ctx.norm, **attrs))


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


def _copies_factor(copies: float, norm: str) -> float:
    """Norm of copying every entry ``copies`` times: sqrt(copies) in L2, 1 in L-inf."""
    return 1.0 if norm == "linf" else math.sqrt(copies)


def translation(ctx: LipschitzContext) -> Linear:
    """Adding a constant: an isometry, unless broadcasting copies the varying input (then sqrt(copies))."""
    copies = numel(ctx.out_shape) / max(numel(ctx.in_shape), 1)
    if copies == 1:
        return Linear("isometry")
    return Linear("bounded", bound=constants.exact_constant(_copies_factor(copies, ctx.norm), method="broadcast",
                                                            norm=ctx.norm))


def dense(ctx: LipschitzContext, weight: torch.Tensor) -> Linear:
    """``x -> x @ weight^T`` along the last axis, ``weight`` (out, in)."""
    return Linear("dense", weight=weight.detach().double())


def gemm(ctx: LipschitzContext, alpha: float, trans_a: bool, trans_b: bool):
    """Gemm with a varying A (rows are samples) and constant B: ``y = alpha B'^T x`` per sample."""
    if ctx.varying_inputs != [0] or trans_a:
        return unbounded(ctx, "the weight depends on the input (or A is transposed across the batch)")
    b = ctx.const(1).double()
    return dense(ctx, alpha * (b if trans_b else b.T))


def matmul(ctx: LipschitzContext):
    """MatMul with one constant operand: ``x @ B`` acts on the last axis (norm ||B||), ``A @ x`` on the second to
    last (norm ||A||)."""
    if ctx.varying_inputs == [0] and ctx.const(1).dim() == 2:
        return dense(ctx, ctx.const(1).double().T)
    if ctx.varying_inputs == [1] and ctx.const(0).dim() == 2 and len(ctx.input_shapes[1]) >= 2:
        from certify.lipschitz import linear_norms

        return Linear("bounded", bound=linear_norms.dense_bound(ctx.const(0).double(), norm=ctx.norm)
                      if ctx.norm == "l2" else _linf_left(ctx.const(0)))
    if len(ctx.varying_inputs) > 1:
        return product_of_varying(ctx)
    return unbounded(ctx, "batched constant operand not supported")


def _linf_left(a: torch.Tensor) -> LayerBound:
    value = float(a.double().abs().sum(dim=1).max())
    return constants.exact_constant(value, method="row sums", norm="linf")


def conv(ctx: LipschitzContext, strides, pads, dilations, groups: int) -> Linear | LayerBound:
    """Convolution with a constant kernel; ``pads`` explicit ONNX [begin..., end...]."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "the kernel depends on the input")
    return Linear("conv", weight=ctx.const(1).detach().double(),
                  conv={"stride": list(strides), "padding": list(pads), "dilation": list(dilations),
                        "groups": int(groups)})


def conv_transpose(ctx: LipschitzContext, strides, dilations, groups: int, full_spatial) -> Linear | LayerBound:
    """A transposed convolution is the adjoint of the strided convolution with the same kernel read on the
    uncropped output (same norm); cropping (pads) and zero-extension (output_padding) never increase it."""
    from certify.lipschitz import linear_norms

    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "the kernel depends on the input")
    weight = ctx.const(1).detach().double()
    nd = weight.dim() - 2
    full = (weight.shape[1] * int(groups), *[int(f) for f in full_spatial])
    bound = linear_norms.conv_bound(weight, full, stride=list(strides), padding=[0] * (2 * nd),
                                    dilation=list(dilations), groups=int(groups), norm="l2")
    if ctx.norm == "linf":  # the max row sum of |A|: per OUTPUT entry, the sum over the inputs it reads
        bound = linear_norms.conv_bound(weight, ctx.in_shape, stride=list(strides), padding=[0] * (2 * nd),
                                        dilation=list(dilations), groups=int(groups), transposed=True, norm="linf")
    bound.lower = None
    bound.exact = False
    return Linear("bounded", bound=bound)


def convolution(ctx: LipschitzContext, window, groups: int, transposed: bool = False):
    """Conv / ConvTranspose with the geometry of ``window`` (a ``SlidingWindow``) and a constant kernel."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "the kernel depends on the input")
    in_spatial = ctx.in_shape[1:]
    nd = len(in_spatial)
    kernel = list(ctx.const(1).shape[2:])
    if transposed:
        return conv_transpose(ctx, window.axis_strides(nd), window.axis_dilations(nd), groups,
                              window.full_spatial_shape(in_spatial, kernel))
    return conv(ctx, window.axis_strides(nd), window.resolved_pads(in_spatial, kernel), window.axis_dilations(nd),
                groups)


def scale(ctx: LipschitzContext, factor: torch.Tensor) -> Linear | LayerBound:
    """``x * factor`` for a constant factor; when broadcasting copies x, the copies add sqrt(copies)."""
    factor = torch.as_tensor(factor).detach().double()
    copies = numel(ctx.out_shape) / max(numel(ctx.in_shape), 1)
    if copies == 1 and factor.dim() <= len(ctx.in_shape) + 1:
        shape = factor.shape[1:] if factor.dim() == len(ctx.in_shape) + 1 else factor.shape
        return Linear("scale", scale=factor.reshape(shape))
    value = float(factor.abs().max()) * _copies_factor(copies, ctx.norm)
    return Linear("bounded", bound=LayerBound(upper=constants.round_up(value), lower=None, method="broadcast scale",
                                             norm=ctx.norm))


def add(ctx: LipschitzContext, subtract: bool = False):
    """Add / Sub: a residual sum of two varying tensors, or a translation."""
    if len(ctx.varying_inputs) > 1:
        return Combine("sum")
    if subtract and ctx.varying_inputs == [1]:
        return scale(ctx, torch.tensor(-1.0))
    return translation(ctx)


def mul(ctx: LipschitzContext):
    if len(ctx.varying_inputs) > 1:
        return product_of_varying(ctx)
    return scale(ctx, ctx.const(1 - ctx.varying_inputs[0]))


def div(ctx: LipschitzContext):
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "division by an input-dependent tensor has no global Lipschitz constant")
    denominator = ctx.const(1).double()
    if bool((denominator == 0).any()):
        return unbounded(ctx, "division by zero")
    return scale(ctx, 1.0 / denominator)


def variadic(ctx: LipschitzContext, kind: str, count: int):
    """Sum / Mean (``kind="sum"``, Mean divides by ``count``) and Max / Min (``kind="max"``: elementwise max is
    1-Lipschitz in the concatenated inputs) over several inputs."""
    if len(ctx.varying_inputs) > 1:
        return Combine(kind, scale=1.0 / count if count > 1 else 1.0)
    if kind == "max":
        if numel(ctx.out_shape) == numel(ctx.in_shape):
            return Activation(constants.Slope(0.0, 1.0), constants.exact_constant(1.0, norm=ctx.norm))
        return translation(ctx)
    if count > 1:
        return scale(ctx, torch.tensor(1.0 / count))
    return translation(ctx)


def where(ctx: LipschitzContext):
    if ctx.varying(0):
        return unbounded(ctx, "an input-dependent condition makes the output jump")
    return Combine("max")


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


def indexed(ctx: LipschitzContext, module):
    """Data movement with constant indices/pads/repeats (input 0 is the data)."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "indices, pads or repeats depend on the input")
    return selection(ctx, module)


def concat(ctx: LipschitzContext, module):
    return Combine("concat") if len(ctx.varying_inputs) > 1 else selection(ctx, module)


def reduction(ctx: LipschitzContext, kind: str, group: int | None = None) -> LayerBound | Linear:
    """Reduce* over n entries per output (disjoint groups; ``group``, default numel(in)/numel(out)): sum sqrt(n)
    (L-inf: n), mean 1/sqrt(n) (1), max/min 1, L2 norm 1 (L-inf: sqrt(n)), L1 norm sqrt(n) (n), log-sum-exp 1
    (gradient softmax, ||p||_2 <= ||p||_1 = 1); sum of squares and product are not Lipschitz."""
    n = numel(ctx.in_shape) / max(numel(ctx.out_shape), 1) if group is None else group
    linf = ctx.norm == "linf"
    values = {"sum": n if linf else math.sqrt(n), "mean": 1.0 if linf else 1 / math.sqrt(n), "max": 1.0,
              "l2": math.sqrt(n) if linf else 1.0, "l1": n if linf else math.sqrt(n), "logsumexp": 1.0}
    if kind not in values:
        return unbounded(ctx, f"Reduce{kind} has no global Lipschitz constant")
    bound = constants.exact_constant(values[kind], method="reduction", norm=ctx.norm)
    return Linear("bounded", bound=bound) if kind in ("sum", "mean") else bound


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


def softmax(ctx: LipschitzContext, axis: int, flatten_to_2d: bool, log: bool = False) -> LayerBound:
    """Softmax / LogSoftmax along ``axis`` of the batch-1 tensor (the whole trailing block before opset 13)."""
    full = (1, *ctx.in_shape)
    axis = axis + len(full) if axis < 0 else axis
    size = math.prod(full[axis:]) if flatten_to_2d else full[axis]
    return (constants.log_softmax_bound if log else constants.softmax_bound)(size, ctx.norm)


def clip(ctx: LipschitzContext):
    """Clip: slope in [0, 1]; with input-dependent bounds, 1 jointly (min and max are 1-Lipschitz)."""
    if ctx.varying_inputs != [0]:
        return constants.exact_constant(1.0, method="clip (joint)", norm=ctx.norm)
    return activation("Clip", ctx)


def prelu(ctx: LipschitzContext):
    if ctx.varying_inputs != [0]:
        return product_of_varying(ctx)
    return activation("PRelu", ctx, slope=ctx.const(1).double().numpy())


def batchnorm(ctx: LipschitzContext, epsilon: float):
    """Inference BatchNorm: the per-channel scale gamma / sqrt(var + eps) (fused into a preceding conv)."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "its parameters depend on the input")
    factor = constants.batchnorm_scale(ctx.const(1), ctx.const(4), epsilon)
    channel_shape = (-1,) + (1,) * (len(ctx.in_shape) - 1) if factor.ndim <= 1 else factor.shape
    return scale(ctx, torch.from_numpy(factor).reshape(channel_shape))


def normalization(ctx: LipschitzContext, epsilon: float):
    """Layer / instance / group normalisation: max|gamma| / sqrt(eps) (see ``constants.layernorm_bound``)."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "its scale depends on the input")
    if sum(s is not None for s in ctx.output_shapes) > 1:
        return unbounded(ctx, "its statistics outputs (mean, inverse std) are used")
    gamma = ctx.const(1)
    gamma = None if gamma is None else gamma.double().numpy()
    return constants.layernorm_bound(numel(ctx.in_shape), gamma, epsilon, ctx.norm)


def pooling(ctx: LipschitzContext, window, kind: str, count_include_pad: bool = False):
    """MaxPool (``kind="max"``) or AveragePool over the geometry of ``window`` (a ``SlidingWindow``)."""
    in_spatial = ctx.in_shape[1:]
    nd = len(in_spatial)
    args = (ctx.in_shape, ctx.out_shape, window.kernel_shape, window.axis_strides(nd),
            window.resolved_pads(in_spatial), window.axis_dilations(nd))
    if kind == "max":
        return constants.maxpool_bound(*args, norm=ctx.norm)
    return Linear("bounded", bound=constants.avgpool_bound(*args, count_include_pad=count_include_pad,
                                                          norm=ctx.norm))


def resampling(ctx: LipschitzContext, resampler):
    """Resize / Upsample with constant scales: one matrix per axis (nearest: a selection)."""
    if ctx.varying_inputs != [0]:
        return unbounded(ctx, "scales or sizes depend on the input")
    plan, _ = resampler.plan((1, *ctx.in_shape))
    return separable(ctx, [step.dense_matrix() for step in plan])


def cast(ctx: LipschitzContext, dtype: torch.dtype):
    """A cast to a float type at least as precise as its input is exact (an isometry); any other cast rounds, and
    rounding is not Lipschitz (two inputs closer than a rounding step can land a whole step apart)."""
    source = ctx.input_dtypes[0] if ctx.input_dtypes else None
    if dtype.is_floating_point and source is not None and source.is_floating_point and (
            torch.finfo(dtype).eps <= torch.finfo(source).eps and torch.finfo(dtype).max >= torch.finfo(source).max):
        return Linear("isometry")
    return unbounded(ctx, rounding_reason(f"casting {source} to {dtype}"))


def rounding_reason(what: str) -> str:
    """Why a rounding operator gets no bound (one wording for every such operator)."""
    return (f"{what} rounds to a coarser grid: not Lipschitz (inputs closer than one rounding step can land a whole "
            "step apart), so no certificate covers it")


# --------------------------------------------------------------------------------------------------------------
# bounds of one linear node and of fused segments


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
    value at 0). Each sample runs at batch 1 (vmap), so reshapes to a fixed batch of 1 stay correct."""
    modules = [copy.deepcopy(r.module).double() for r in segment.members]

    def as64(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    fixed = [[None if (not n or n == r.varying[0]) else as64(env[n]) for n in r.inputs] for r in segment.members]

    def run_one(v: torch.Tensor) -> torch.Tensor:
        x = v.unsqueeze(0)
        for module, record, args in zip(modules, segment.members, fixed):
            x = module(*[x if n == record.varying[0] else a for n, a in zip(record.inputs, args)])
            x = x[0] if isinstance(x, (tuple, list)) else x
        return x.squeeze(0)

    zero_out = run_one(torch.zeros(segment.in_shape, dtype=torch.float64)).detach()

    def batched(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        try:
            out = torch.func.vmap(run_one)(v)
        except Exception:  # an operator vmap cannot trace: run the samples one by one
            out = torch.stack([run_one(s) for s in v])
        return out - zero_out

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


# --------------------------------------------------------------------------------------------------------------
# ECLipsE-Fast


#: Safety shift of every X_i, relative to lambda_i (X_i's eigenvalues lie in [lambda_i, 2 lambda_i]): it covers the
#: float64 rounding of forming X_i and of its Cholesky factor, a few n*u*lambda_i for n up to 10^5.
ECLIPSE_SHIFT = 1e-9


#: Relative margin on the final spectral norm (a triangular solve with a factor of condition number <= sqrt 2).
ECLIPSE_MARGIN = 1e-8
#: Largest layer matrix ECLipsE-Fast takes (its Gram products and factorisations grow with the cube of the width).
ECLIPSE_MAX_ENTRIES = 1 << 22


def _small_gram(b: torch.Tensor) -> torch.Tensor:
    """The smaller of ``b b^T`` and ``b^T b`` (same nonzero spectrum, top eigenvalue ``||b||_2^2``)."""
    return b @ b.T if b.shape[0] <= b.shape[1] else b.T @ b


def _top_eigenvalue(gram: torch.Tensor) -> float:
    """Largest eigenvalue of a PSD matrix: dense for small ones, Lanczos (scipy ``eigsh``) above 64 rows."""
    if gram.shape[0] <= 64:
        return float(torch.linalg.eigvalsh(gram)[-1])
    from scipy.sparse.linalg import eigsh

    start = np.ones(gram.shape[0]) + np.linspace(0.0, 1e-3, gram.shape[0])
    return float(eigsh(gram.numpy(), k=1, which="LA", tol=1e-12, v0=start, return_eigenvectors=False)[0])


def _certified_top(gram: torch.Tensor) -> float:
    """A guaranteed upper bound on the top eigenvalue of PSD ``gram``: an estimate c, raised until the Cholesky
    factorisation of ``c I - gram`` succeeds (then ``lambda_max < c``; the relative margin of at least 1e-7 is far
    above the float64 rounding of the factorisation)."""
    estimate = max(_top_eigenvalue(gram), 0.0)
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    scale = float(gram.diagonal().abs().max()) if gram.numel() else 0.0
    margin = 1e-7
    while margin < 1.0:
        c = estimate * (1 + margin) + margin * scale + 1e-300
        if int(torch.linalg.cholesky_ex(c * eye - gram)[1]) == 0:
            return c
        margin *= 10
    return float(torch.linalg.eigvalsh(gram)[-1]) * 2 + 1e-300


def eclipse_fast(matrices: list[torch.Tensor]) -> tuple[float | None, torch.Tensor | None]:
    """ECLipsE-Fast (Xu & Sivaranjani, NeurIPS 2024) for ``x -> W_l s(W_{l-1} ... s(W_1 x))`` with every
    activation slope-restricted in [0, 1] (wider slopes [0, b] are folded into the next matrix by the caller).

    Guarantee (a sequential S-procedure): with ``X_0 = I``, ``lambda_i = 1 / ||W_i X_{i-1}^-1 W_i^T||`` and
    ``X_i = 2 lambda_i I - lambda_i^2 W_i X_{i-1}^-1 W_i^T`` (positive definite, eigenvalues in
    [lambda_i, 2 lambda_i]), the slope condition ``u_j (v_j - u_j) >= 0`` for ``u = dz_i``, ``v = W_i dz_{i-1}`` gives
    ``dz_{i-1}^T X_{i-1} dz_{i-1} >= dz_i^T X_i dz_i`` (minimise over dz_{i-1}), hence
    ``||df||^2 <= ||W_l X_{l-1}^-1/2||^2 ||dx||^2``. This is the same value as eclipse-nn's ECLipsE_Fast
    (its ``alpha=0, beta=1`` parametrisation). Each X_i is shifted down by ``ECLIPSE_SHIFT * lambda_i`` (a smaller
    X_i keeps the inequality) so float64 rounding cannot break it; the final norm gets ``ECLIPSE_MARGIN``.

    Returns ``(upper, B)`` with ``B = W_l L^-T`` (X_{l-1} = L L^T): any row combination ``c^T W_l`` has the bound
    ``||c^T B||``, used for the class-pair bounds. ``(None, None)`` if a factorisation fails.
    """
    factor = None
    for w in matrices[:-1]:
        b = w if factor is None else torch.linalg.solve_triangular(factor, w.T, upper=False).T
        gram = b @ b.T
        top = _top_eigenvalue(gram)
        if not top > 0:
            return None, None
        lam = 1.0 / top
        x = gram.mul_(-lam * lam)
        x.diagonal().add_(2.0 * lam - ECLIPSE_SHIFT * lam)
        factor, info = torch.linalg.cholesky_ex(x)
        if int(info) != 0:
            return None, None
    w = matrices[-1]
    final = w if factor is None else torch.linalg.solve_triangular(factor, w.T, upper=False).T
    value = math.sqrt(_certified_top(_small_gram(final)))
    return constants.round_up(value, ECLIPSE_MARGIN), final


def pair_norms(final: torch.Tensor) -> np.ndarray:
    """``||B_y - B_j||`` for every pair of output rows, with the ECLipsE margin."""
    rows = final.numpy()
    diff = rows[:, None, :] - rows[None, :, :]
    return np.linalg.norm(diff, axis=2) * (1 + ECLIPSE_MARGIN)


# --------------------------------------------------------------------------------------------------------------
# gated activations exported as products (SiLU, GELU, Mish)


#: Exported forms of gated activations ``x * g(x)``: the gate's scalar function and the activation it makes.
_GATED = (("SiLU (x * sigmoid x)", lambda t: t * torch.sigmoid(t), constants.SILU_SLOPE, 1.0),
          ("GELU (x * (1 + erf(x / sqrt 2)))", lambda t: 2.0 * torch.nn.functional.gelu(t), constants.GELU_SLOPE, 2.0),
          ("GELU (x * Phi(x))", torch.nn.functional.gelu, constants.GELU_SLOPE, 1.0),
          ("Mish (x * tanh softplus x)", torch.nn.functional.mish, constants.MISH_SLOPE, 1.0))


_GATE_OPS = {"Sigmoid", "Tanh", "Softplus", "Erf", "Add", "Sub", "Mul", "Div"}


def _gate_chain(gate: str, source: str, producers: dict, env: dict) -> list | None:
    """The elementwise nodes computing ``gate`` from ``source`` (scalar constants only), or None."""
    chain, name = [], gate
    while name != source:
        if name not in producers or len(chain) > 6:
            return None
        module, inputs = producers[name]
        if module.op_type not in _GATE_OPS:
            return None
        runtime = [n for n in inputs if n and env.get(n) is not None and env[n].numel() != 1]
        if len(runtime) != 1 or any(n and env[n].numel() != 1 for n in inputs if n != runtime[0]):
            return None
        chain.append((module, inputs, runtime[0]))
        name = runtime[0]
    return chain[::-1]


def _gated_activation(record: NodeRecord, producers: dict, env: dict):
    """``Mul(x, g(x))`` where ``g`` is a chain of scalar elementwise ops recognised as SiLU, GELU or Mish (their
    exported forms): then the node is that activation of ``x`` (checked on a grid against the closed form), with
    the one varying input ``x``. Returns ``(rule, [x])`` or None.

    The grid check tolerates float32 constants (``x / 1.4142135`` for ``x / sqrt 2``): each family ``x g(a x)``
    has the same slope range for every a > 0 (substitute y = a x in the derivative), so a slightly different
    scale leaves the constant unchanged."""
    if record.ctx.op_type != "Mul":
        return None
    for source, gate in (record.varying, record.varying[::-1]):
        chain = _gate_chain(gate, source, producers, env)
        if not chain:
            continue
        grid = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
        values = grid
        with torch.no_grad():
            for module, inputs, runtime in chain:
                args = [values if n == runtime else (env[n].double() if n and env[n].is_floating_point() else
                                                      (env[n] if n else None)) for n in inputs]
                values = copy.deepcopy(module).double()(*args).reshape(-1)
            product = grid * values
            for name, fn, slope, factor in _GATED:
                if values.shape == grid.shape and torch.allclose(product, fn(grid), atol=1e-6, rtol=1e-5):
                    scaled = constants.Slope(slope.lo * factor, slope.hi * factor)
                    bound = constants.activation_bound("Gelu" if "GELU" in name else
                                                       ("Silu" if "SiLU" in name else "Mish"), record.ctx.norm)
                    bound.upper, bound.lower = bound.upper * factor, bound.lower * factor
                    bound.method = f"constant: {name}"
                    return Activation(scaled, bound), [source]
    return None


# --------------------------------------------------------------------------------------------------------------
# the analysis


@dataclass
class Chain:
    """Alternating fused linear segments and slope-restricted activations, bounded by ECLipsE-Fast."""

    items: list  # Segment | NodeRecord (activation)
    upper: float | None = None
    pairs: np.ndarray | None = None  # L of f_y - f_j when the chain ends in a linear segment with class outputs
    ms: float = 0.0
    method: str = "ECLipsE-Fast"

    @property
    def input(self) -> str:
        return self.items[0].input

    @property
    def output(self) -> str:
        last = self.items[-1]
        return last.output if isinstance(last, Segment) else last.outputs[0]


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


def _is_activation(record: NodeRecord) -> bool:
    return isinstance(record.rule, Activation) and record.rule.slope is not None and record.bound.upper is not None


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
            eclipse: bool = True, on_record: Callable[[NodeRecord], None] | None = None) -> Analysis:
    """Bound every node of ``graph`` (an ``OnnxGraph``) and compose the bounds from its input to its output.

    ``input_shape`` is the per-sample input shape (batch excluded). ``progress(fraction, message)`` is called
    after every node, ``on_record(record)`` with every node bounded on its own.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', not {norm!r}")
    if len(graph.input_names) != 1 or len(graph.output_names) != 1:
        raise ValueError("Lipschitz bounds need a graph with one input and one output")
    report = progress or (lambda fraction, message: None)
    input_name, output_name = graph.input_names[0], graph.output_names[0]
    dtype = graph.input_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"input {input_name!r} is not a float tensor ({dtype})")
    x0 = torch.zeros((1, *input_shape), dtype=dtype)
    try:
        with torch.no_grad():
            _, env = graph.run(x0, keep=True)
    except (RuntimeError, ValueError, IndexError) as e:
        raise ValueError(f"the model does not run on inputs of shape {list(input_shape)}: {e}") from e
    steps = list(graph.steps())
    consumers: dict[str, int] = {}
    for _, inputs, _ in steps:
        for n in inputs:
            if n:
                consumers[n] = consumers.get(n, 0) + 1

    producers = {n: (module, inputs) for module, inputs, outputs in steps for n in outputs if n}
    product: dict = {input_name: 1.0}
    composed: dict = {input_name: 1.0}
    reasons: dict = {}
    varying = {input_name}
    records: list[NodeRecord] = []
    for index, (module, inputs, outputs) in enumerate(steps):
        ctx = _context(module, inputs, outputs, env, varying, norm)
        live = [n for n in inputs if n in varying]
        record = NodeRecord(index, module, inputs, outputs, ctx, rule=None, varying=live)
        records.append(record)
        if not live:
            for n in outputs:
                product[n] = composed[n] = 0.0
            record.bound = LayerBound(upper=0.0, lower=0.0, method="no varying input", exact=True, norm=norm)
            continue
        started = time.perf_counter()
        gated = _gated_activation(record, producers, env) if len(live) == 2 else None
        if gated is not None:
            record.rule, record.varying = gated
        else:
            record.rule = _rule(module, ctx)
        record.bound = _finite_bound(_own_bound(record, norm), record.ctx)
        record.bound.ms = record.bound.ms or (time.perf_counter() - started) * 1e3
        p_out = _propagate(record, product)
        c_out = _propagate(record, composed)
        for value in (p_out, c_out):
            constants.finite(math.inf if value is None else value, f"the bound at {module.onnx_name}")
        for n in outputs:
            if not n:
                continue
            product[n], composed[n] = p_out, c_out
            if p_out is None or c_out is None:
                reasons[n] = record.bound.reason or next((reasons[i] for i in live if i in reasons), None)
            if p_out != 0.0:
                varying.add(n)
        if on_record is not None:
            on_record(record)
        report((index + 1) / max(len(steps), 1), f"{module.onnx_name} ({module.op_type})")

    segments = _segments(records, consumers, graph.output_names)
    for segment in segments:
        if any(r.bound.upper is None for r in segment.members):
            continue
        bound_segment(segment, env, norm)
    chains = _chains(records, segments, consumers, graph.output_names) if (eclipse and norm == "l2") else []
    for chain in chains:
        _bound_chain(chain, output_name)
    if eclipse and norm == "l2":
        from certify.lipschitz import averaged

        chains += averaged.bound_chains(records, segments, consumers, graph.output_names)
    _recompose(records, segments, chains, composed, consumers)
    return Analysis(records, segments, chains, product, composed, reasons, input_name, output_name,
                    tuple(input_shape), per_sample(env[output_name].shape), norm)


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


def _broadcast_factor(ctx: LipschitzContext, index: int) -> float:
    """A term broadcast to the output is copied numel(out)/numel(in) times: its L2 norm grows by the square root."""
    return _copies_factor(numel(ctx.out_shape) / max(numel(ctx.input_shapes[index]), 1), ctx.norm)


def _propagate(record: NodeRecord, table: dict) -> float | None:
    """Bound of ``input -> output`` of this node from the bounds of its inputs (one route)."""
    rule, ctx = record.rule, record.ctx
    if isinstance(rule, Combine):
        terms = []
        for i in ctx.varying_inputs:
            value = table.get(record.inputs[i])
            if value is None:
                return None
            terms.append((value, _broadcast_factor(ctx, i)))
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
            _broadcast_factor(ctx, ctx.varying_inputs[0])
        incoming = values[0] * max(copies, 1.0)
    else:  # a joint constant w.r.t. the concatenated (broadcast) varying inputs
        incoming = _joint([(table[record.inputs[i]], _broadcast_factor(ctx, i)) for i in ctx.varying_inputs],
                          ctx.norm)
    return _mul(record.bound.upper, incoming)


def _joint(terms, norm: str) -> float:
    """Norm of the concatenation of terms ``(bound, broadcast factor)``: a term broadcast to the output counts once
    per copy (the factor) in L2; in L-inf the concatenation's norm is the largest term's."""
    if norm == "linf":
        return max(v for v, _ in terms)
    return math.sqrt(sum((v * f) ** 2 for v, f in terms))


def _linear_single(record: NodeRecord, consumers: dict, graph_outputs) -> bool:
    """A linear node with one varying input whose only used output is its first (Dropout's unused mask is fine)."""
    used = [n for n in record.outputs[1:] if n and (consumers.get(n) or n in graph_outputs)]
    return (isinstance(record.rule, Linear) and len(record.varying) == 1 and not used
            and record.bound.upper is not None)


def _segments(records, consumers, graph_outputs) -> list[Segment]:
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


def _chains(records, segments, consumers, graph_outputs) -> list[Chain]:
    """Maximal alternations segment, activation, segment, ... where each link feeds only the next."""
    items: dict[str, object] = {}
    for segment in segments:
        if segment.matrix is not None and segment.bound is not None and segment.matrix.numel() <= ECLIPSE_MAX_ENTRIES:
            items[segment.input] = segment
    for record in records:
        if _is_activation(record) and len(record.varying) == 1 and record.rule.slope.lo >= 0:
            items.setdefault(record.varying[0], record)
    chains: list[Chain] = []
    used: set[int] = set()
    for segment in segments:
        if id(segment) in used or segment.input not in items or items[segment.input] is not segment:
            continue
        chain = [segment]
        used.add(id(segment))
        while True:
            tail = chain[-1].output if isinstance(chain[-1], Segment) else chain[-1].outputs[0]
            nxt = items.get(tail)
            if nxt is None or consumers.get(tail, 0) != 1 or tail in graph_outputs:
                break
            if isinstance(nxt, Segment) == isinstance(chain[-1], Segment):
                break
            chain.append(nxt)
            used.add(id(nxt))
        if sum(isinstance(i, Segment) for i in chain) >= 2:
            chains.append(Chain(chain))
    return chains


def _bound_chain(chain: Chain, output_name: str) -> None:
    started = time.perf_counter()
    matrices, slope = [], 1.0
    for item in chain.items:
        if isinstance(item, Segment):
            matrices.append(item.matrix * slope)
            slope = 1.0
        else:
            slope = item.rule.slope.hi
    trailing = slope  # an activation after the last linear segment
    upper, final = eclipse_fast(matrices)
    chain.upper = None if upper is None else upper * trailing
    if upper is not None and chain.output == output_name and isinstance(chain.items[-1], Segment):
        chain.pairs = pair_norms(final)
    chain.ms = (time.perf_counter() - started) * 1e3


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
        value = _propagate(record, composed)
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
