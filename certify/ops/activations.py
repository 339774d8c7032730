"""Activations: pointwise nonlinearities, Clip, and the (log-)softmax normalisations.

Attribute values (``alpha``, ``beta``, ``gamma``, Clip's constant bounds) are kept as fields because bounds on
the operator's slope are read from them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from certify.lipschitz import constants
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.constants import Slope, exact_constant
from certify.ops import examples
from certify.ops.base import OnnxOp
from certify.ops.elementwise import Pointwise
from certify.ops.registry import register


@register("Relu", versions=(6, None))
class Relu(Pointwise):
    fn = staticmethod(torch.relu)
    fixed_slope = (0.0, 1.0)
    float_rounding = "exact"


@register("LeakyRelu", versions=(6, None))
class LeakyRelu(Pointwise):
    attributes = {"alpha": 0.01}

    def fn(self, x):
        return F.leaky_relu(x, self.alpha)

    def slope(self):
        """alpha | 1: the range between them."""
        return Slope(min(self.alpha, 1.0), max(self.alpha, 1.0))


@register("PRelu", versions=(7, None))
class PRelu(OnnxOp):
    """``slope * x`` where ``x < 0``, else ``x``; ``slope`` broadcasts to ``x``."""

    float_rounding = "elementwise"

    @classmethod
    def example(cls, op_type, rng):
        """A constant or input-dependent slope, broadcast (unidirectionally) to x."""
        g = examples.Graph(rng, examples.shape(rng))
        slope, kind = g.operand(examples.broadcastable(rng, g.x_shape))
        return examples.Example(g.model(g.node("PRelu", ["x", slope])), f"{kind} slope")

    def forward(self, x, slope):
        return torch.where(x < 0, x * slope, x)

    def lipschitz(self, ctx):
        """Slope in [min(slope, 1), max(slope, 1)] with the constant slope input."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.product_of_varying(ctx)
        slopes = ctx.const(1).double().numpy()
        rules.finite_attributes(self.op_type, {"slope": slopes})
        slopes = slopes.reshape(-1)
        slope = Slope(min(float(slopes.min()), 1.0), max(float(slopes.max()), 1.0))
        return rules.activation(ctx, slope, f"{self.op_type}: no global Lipschitz constant")


@register("Elu", versions=(6, None))
class Elu(Pointwise):
    attributes = {"alpha": 1.0}

    def fn(self, x):
        return F.elu(x, self.alpha)

    def slope(self):
        """1 | alpha e^t (between 0 and alpha): max(1, |alpha|) for any sign of alpha."""
        return Slope(min(self.alpha, 0.0), max(self.alpha, 1.0))


@register("Selu", versions=(6, None))
class Selu(Pointwise):
    attributes = {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}

    def fn(self, x):
        return self.gamma * F.elu(x, self.alpha)

    def slope(self):
        """gamma | gamma alpha e^t: between 0, gamma and gamma alpha."""
        ends = (self.gamma, self.gamma * self.alpha, 0.0)
        return Slope(min(ends), max(ends))


@register("Celu", versions=(12, None))
class Celu(Pointwise):
    attributes = {"alpha": 1.0}

    def fn(self, x):
        return F.celu(x, self.alpha)

    def slope(self):
        """1 | e^(t/alpha) for t < 0: <= 1 when alpha > 0; when alpha < 0, e^(t/alpha) grows without bound as
        t -> -inf, and alpha = 0 divides by zero: not Lipschitz."""
        return Slope(0.0, 1.0) if self.alpha > 0 else None

    def unbounded_reason(self) -> str:
        return (f"Celu with alpha={self.alpha} <= 0: alpha (exp(t / alpha) - 1) grows like exp(|t / alpha|) (or "
                "divides by zero): not Lipschitz")


@register("Sigmoid", versions=(6, None))
class Sigmoid(Pointwise):
    fn = staticmethod(torch.sigmoid)
    fixed_slope = (0.0, 0.25)  # s(1 - s), largest at 0
    gate_step = True


@register("HardSigmoid", versions=(6, None))
class HardSigmoid(Pointwise):
    """``clamp(alpha * x + beta, 0, 1)``."""

    attributes = {"alpha": 0.2, "beta": 0.5}

    def fn(self, x):
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)

    def slope(self):
        """alpha on the ramp, 0 outside."""
        return Slope(min(self.alpha, 0.0), max(self.alpha, 0.0))


@register("HardSwish", versions=(14, None))
class HardSwish(Pointwise):
    """``x * clamp(x / 6 + 1/2, 0, 1)``."""

    fn = staticmethod(F.hardswish)
    fixed_slope = (-0.5, 1.5)  # (2t + 3) / 6 on (-3, 3)


@register("Tanh", versions=(6, None))
class Tanh(Pointwise):
    fn = staticmethod(torch.tanh)
    fixed_slope = (0.0, 1.0)  # 1 - tanh^2
    gate_step = True


@register("Softplus", versions=(1, None))
class Softplus(Pointwise):
    """``log(1 + exp(x))`` (torch returns ``x`` itself above 20, where they agree to float precision)."""

    fn = staticmethod(F.softplus)
    fixed_slope = (0.0, 1.0)  # the sigmoid
    gate_step = True


@register("Softsign", versions=(1, None))
class Softsign(Pointwise):
    fn = staticmethod(F.softsign)
    fixed_slope = (0.0, 1.0)  # 1 / (1 + |t|)^2


@register("Gelu", versions=(20, None))
class Gelu(Pointwise):
    """``x * Phi(x)``, or its tanh approximation when ``approximate="tanh"``."""

    def __init__(self, node):
        super().__init__(node)
        self.approximate = node.attr("approximate", "none")
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"Gelu {node.name}: approximate must be 'none' or 'tanh', not {self.approximate!r}")

    def fn(self, x):
        return F.gelu(x, approximate=self.approximate)

    def slope(self):
        """See ``constants.GELU_SLOPE`` (closed form) and ``GELU_TANH_SLOPE`` (grid search)."""
        return constants.GELU_TANH_SLOPE if self.approximate == "tanh" else constants.GELU_SLOPE

    @property
    def searched(self) -> bool:
        return self.approximate == "tanh"

    @classmethod
    def example(cls, op_type, rng):
        approximate = examples.pick(rng, ["none", "tanh"])
        return examples.unary(op_type, rng, approximate, opset=20, approximate=approximate)


@register("Mish", versions=(18, None))
class Mish(Pointwise):
    """``x * tanh(softplus(x))``."""

    fn = staticmethod(F.mish)
    searched = True

    def slope(self):
        """See ``constants.MISH_SLOPE`` (grid search)."""
        return constants.MISH_SLOPE


@register("Clip", versions=(6, None))
class Clip(OnnxOp):
    """Clamp to ``[min, max]``: attributes before opset 11, optional inputs from 11 on.

    ``min``/``max`` are the bounds known at conversion (floats; None: unbounded or computed at run time). As in
    ONNX (and torch), when ``min > max`` every value becomes ``max``.
    """

    float_rounding = "exact"

    def __init__(self, node):
        super().__init__(node)
        self.min = self._bound(node, "min", 1)
        self.max = self._bound(node, "max", 2)

    @staticmethod
    def _bound(node, name: str, index: int) -> float | None:
        value = node.attr(name)
        if value is None and node.const(index) is not None:
            value = node.const(index).item()
        return None if value is None or math.isinf(value) else float(value)

    @classmethod
    def example(cls, op_type, rng):
        """Each bound absent, a constant (min > max included) or a scalar function of x (``ReduceMax(x)``)."""
        g = examples.Graph(rng, examples.shape(rng), opset=examples.pick(rng, [7, examples.OPSET]))
        inputs, kinds, attrs = ["x"], [], {}
        for name in ("min", "max"):
            kind = examples.pick(rng, ["absent", "const", "varying"] if g.opset >= 11 else ["absent", "const"])
            kinds.append(f"{name} {kind}")
            if kind == "const" and g.opset < 11:
                attrs[name] = examples.real(rng)
            elif kind == "const":
                inputs.append(g.const(examples.real(rng)))
            elif kind == "varying":
                reduced = g.node(examples.pick(rng, ["ReduceMax", "ReduceMin", "ReduceMean"]), ["x"], keepdims=0)
                inputs.append(reduced)
            elif g.opset >= 11:
                inputs.append("")
        return examples.Example(g.model(g.node("Clip", inputs, **attrs)), ", ".join(kinds))

    def forward(self, x, lower=None, upper=None):
        lo = lower if lower is not None else self.min
        hi = upper if upper is not None else self.max
        if lo is None and hi is None:
            return x
        return torch.clamp(x, lo, hi)

    def lipschitz(self, ctx):
        """Slope in [0, 1]; with input-dependent bounds, 1 jointly (min and max are 1-Lipschitz)."""
        from certify.lipschitz import constants, rules

        if ctx.varying_inputs != [0]:
            return constants.exact_constant(1.0, method="clip (joint)", norm=ctx.norm)
        return rules.activation(ctx, Slope(0.0, 1.0), "")


class Normalize(OnnxOp):
    """Softmax / LogSoftmax along ``axis``.

    Before opset 13 the input is flattened to 2-D at ``axis`` (default 1) and normalised over the whole trailing
    block; from opset 13 the normalisation runs along the single ``axis`` (default -1).
    """

    @staticmethod
    def fn(x, dim):
        raise NotImplementedError

    def __init__(self, node):
        super().__init__(node)
        self.flatten_to_2d = node.opset < 13
        self.axis = int(node.attr("axis", 1 if self.flatten_to_2d else -1))

    def forward(self, x):
        if not self.flatten_to_2d:
            return self.fn(x, self.axis)
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        lead = math.prod(x.shape[:axis])
        return self.fn(x.reshape(lead, math.prod(x.shape[axis:])), 1).reshape(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", axis={self.axis}, flatten_to_2d={self.flatten_to_2d}"

    @classmethod
    def example(cls, op_type, rng):
        """Every axis, in both the flattening (opset < 13) and the single-axis semantics."""
        opset = examples.pick(rng, [11, 13])
        per_sample = examples.shape(rng)
        axis = int(rng.integers(-len(per_sample) - 1, len(per_sample) + 1))
        return examples.unary(op_type, rng, f"opset {opset}", opset=opset, per_sample=per_sample, axis=axis)

    def lipschitz(self, ctx):
        """Softmax 1/2, LogSoftmax sqrt(n) (see ``softmax_bound``) along ``axis`` of the batch-1 tensor
        (the whole trailing block before opset 13)."""
        full = (1, *ctx.in_shape)
        axis = self.axis + len(full) if self.axis < 0 else self.axis
        size = math.prod(full[axis:]) if self.flatten_to_2d else full[axis]
        return self.bound(size, ctx.norm)


@register("Softmax", versions=(1, None))
class Softmax(Normalize):
    fn = staticmethod(torch.softmax)

    @staticmethod
    def bound(axis_size: int, norm: str):
        return softmax_bound(axis_size, norm)


@register("LogSoftmax", versions=(1, None))
class LogSoftmax(Normalize):
    fn = staticmethod(torch.log_softmax)

    @staticmethod
    def bound(axis_size: int, norm: str):
        return log_softmax_bound(axis_size, norm)


# --------------------------------------------------------------------------------------------------------------
# bounds (Lipschitz constants of this family; ``certify.lipschitz`` composes them)


def softmax_bound(axis_size: int, norm: str = "l2") -> LayerBound:
    """Softmax along an axis: constant 1/2 in L2 and in L-inf.

    Gao & Pavel (2017, "On the properties of the softmax function", Prop. 4) show softmax is 1-Lipschitz; the
    exact constant is 1/2. The Jacobian is ``J = diag(p) - p p^T`` (symmetric PSD) and for a unit ``v``,
    ``v^T J v = Var_p(v) <= (max v - min v)^2 / 4 <= 2 (max v^2 + min v^2)/4 <= 1/2`` (Popoviciu), approached by
    ``p -> (1/2, 1/2, 0, ...)``, ``v = (1, -1, 0, ...)/sqrt 2``. In L-inf the row sums are
    ``2 p_i (1 - p_i) <= 1/2``. Slices along the axis are independent (block-diagonal Jacobian): the same constant.
    """
    if axis_size <= 1:
        return exact_constant(0.0, norm=norm)
    return exact_constant(0.5, norm=norm)


def log_softmax_bound(axis_size: int, norm: str = "l2") -> LayerBound:
    """LogSoftmax: Jacobian ``I - 1 p^T``, an oblique projection whose L2 norm is ``||1|| ||p|| <= sqrt(n)``
    (approached as p -> a vertex); L-inf row sums ``2 (1 - p_i) <= 2``."""
    n = max(int(axis_size), 1)
    if n == 1:
        return exact_constant(0.0, norm=norm)
    return exact_constant(math.sqrt(n) if norm == "l2" else 2.0, norm=norm)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): linear bounds of each activation over a box."""
    from certify.local.rules import ReluLike, SShaped, sigmoid_derivative, tanh_derivative

    Relu.relaxation = ReluLike()
    LeakyRelu.relaxation = ReluLike(slope_attribute="alpha")
    PRelu.relaxation = ReluLike(slope_input=1)
    Sigmoid.relaxation = SShaped(torch.sigmoid, sigmoid_derivative)
    Tanh.relaxation = SShaped(torch.tanh, tanh_derivative)


_relaxations()
