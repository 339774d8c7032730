"""Broadcasting elementwise arithmetic, pointwise math functions, selection and dtype casts.

Every operator is a torch function of its inputs, so attacks can differentiate through it. Broadcasting follows
numpy (ONNX multidirectional broadcasting is numpy's), which torch implements as well.
"""

from __future__ import annotations

import functools
import math

import torch
from onnx import TensorProto

from certify.errors import ModelRejected
from certify.ops import examples
from certify.ops.base import TORCH_OF_ONNX, OnnxOp
from certify.ops.registry import register


class Pointwise(OnnxOp):
    """An operator applying ``fn`` elementwise to its one input, with float attributes read from the node.

    ``attributes`` maps attribute names to their ONNX defaults; each becomes a float field of the same name, so a
    subclass's ``fn(self, x)`` (or a plain torch function given as ``staticmethod``) reads ``self.alpha`` etc.
    """

    attributes: dict[str, float] = {}
    float_rounding = "elementwise"
    #: The range ``(lo, hi)`` of ``f'`` when it depends on no attribute (None: see :meth:`slope`).
    fixed_slope: tuple[float, float] | None = None
    #: The slope range came from a grid search (``constants``): the attained lower bound keeps the search margin.
    searched = False

    def __init__(self, node):
        super().__init__(node)
        for name, default in self.attributes.items():
            setattr(self, name, float(node.attr(name, default)))

    def fn(self, x):
        raise NotImplementedError

    @classmethod
    def example(cls, op_type, rng):
        """Each float attribute anywhere on the real line (negative, zero, large)."""
        attrs = {k: examples.real(rng) if rng.random() < 0.7 else v for k, v in cls.attributes.items()}
        opset = max(examples.OPSET, cls.versions[0])
        return examples.unary(op_type, rng, examples.attribute_family(attrs), opset=opset, **attrs)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        fields = "".join(f", {name}={getattr(self, name)!r}" for name in self.attributes)
        return super().extra_repr() + fields

    def slope(self):
        """The range of ``f'`` over the real line (``constants.Slope``), or None when ``f`` is not Lipschitz. Its
        Jacobian is ``diag(f'(x_i))``, so the constant is ``sup |f'|`` in L2 and L-inf alike."""
        from certify.lipschitz.constants import Slope

        return None if self.fixed_slope is None else Slope(*self.fixed_slope)

    def unbounded_reason(self) -> str:
        return f"{self.op_type}: no global Lipschitz constant"

    def lipschitz(self, ctx):
        """The activation's slope range (:meth:`slope`), for ECLipsE chains and as its own bound."""
        from certify.lipschitz import rules

        rules.finite_attributes(self.op_type, {name: getattr(self, name) for name in self.attributes})
        return rules.activation(ctx, self.slope(), self.unbounded_reason(), self.searched)


class Binary(OnnxOp):
    """An operator that is one broadcasting torch function of two inputs."""

    @staticmethod
    def fn(a, b):
        raise NotImplementedError

    @classmethod
    def example(cls, op_type, rng):
        """x and a constant or a function of x, broadcast either way."""
        return examples.broadcast_operands(rng, 2, op_type)

    def forward(self, a, b):
        return self.fn(a, b)


class Variadic(OnnxOp):
    """Max, Min, Sum, Mean: ``fn`` folded left over any number of broadcasting inputs."""

    @staticmethod
    def fn(a, b):
        raise NotImplementedError

    @classmethod
    def example(cls, op_type, rng):
        """One to four operands, x among them, the others constants or functions of x, broadcast."""
        return examples.broadcast_operands(rng, int(rng.integers(1, 5)), op_type)

    def forward(self, *inputs):
        present = [t for t in inputs if t is not None]
        if not present:
            raise ValueError(f"{self.op_type} {self.onnx_name}: needs at least one input")
        return functools.reduce(self.fn, present)

    @staticmethod
    def combine(ctx, kind: str, count: int):
        """Sum / Mean (``kind="sum"``, Mean divides by ``count``) and Max / Min (``kind="max"``: elementwise max is
        1-Lipschitz in the concatenated inputs) over several inputs."""
        from certify.lipschitz import constants, rules

        if len(ctx.varying_inputs) > 1:
            return rules.Combine(kind, scale=1.0 / count if count > 1 else 1.0)
        if kind == "max":
            if rules.numel(ctx.out_shape) == rules.numel(ctx.in_shape):
                return rules.Activation(constants.Slope(0.0, 1.0), constants.exact_constant(1.0, norm=ctx.norm))
            return rules.translation(ctx)
        if count > 1:
            return rules.scale(ctx, torch.tensor(1.0 / count))
        return rules.translation(ctx)


@register("Add", versions=(7, None))
class Add(Binary):
    fn = staticmethod(torch.add)

    gate_step = True

    def lipschitz(self, ctx):
        """A residual sum of varying tensors, or a translation."""
        return add_rule(ctx)


@register("Sub", versions=(7, None))
class Sub(Binary):
    fn = staticmethod(torch.sub)

    gate_step = True

    def lipschitz(self, ctx):
        """A difference of varying tensors, or a translation / negation."""
        return add_rule(ctx, subtract=True)


@register("Mul", versions=(7, None))
class Mul(Binary):
    fn = staticmethod(torch.mul)

    float_rounding = "elementwise"
    gate_step = gate_product = True

    def lipschitz(self, ctx):
        """A constant scale; two varying factors are unbounded."""
        from certify.lipschitz import rules

        if len(ctx.varying_inputs) > 1:
            return rules.product_of_varying(ctx)
        return rules.scale(ctx, ctx.const(1 - ctx.varying_inputs[0]))


@register("Div", versions=(7, None))
class Div(Binary):
    """Integer division truncates toward zero (as C does), which is what ONNX runtimes and test cases use."""

    @staticmethod
    def fn(a, b):
        if a.is_floating_point():
            return torch.div(a, b)
        return torch.div(a, b, rounding_mode="trunc")

    float_rounding = "elementwise"
    gate_step = True

    def lipschitz(self, ctx):
        """Division by a constant; a varying divisor is unbounded."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "division by an input-dependent tensor has no global Lipschitz constant")
        denominator = ctx.const(1).double()
        if bool((denominator == 0).any()):
            return rules.unbounded(ctx, "division by zero")
        return rules.scale(ctx, 1.0 / denominator)


@register("Pow", versions=(7, None))
class Pow(Binary):
    """``x ** y`` with the dtype of ``x``; the exponent may have another dtype (opset 12+)."""

    @staticmethod
    def fn(x, y):
        if x.is_floating_point() or not y.is_floating_point():
            return torch.pow(x, y.to(x.dtype))
        # integer base, fractional exponent: compute in float64, then truncate back like a C cast
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)

    float_rounding = "elementwise"

    def lipschitz(self, ctx):
        """No global constant."""
        from certify.lipschitz import rules

        return rules.unbounded(ctx, "powers are not globally Lipschitz")


@register("Neg", versions=(6, None))
class Neg(Pointwise):
    fn = staticmethod(torch.neg)
    fixed_slope = (-1.0, 1.0)
    float_rounding = "exact"


@register("Abs", versions=(6, None))
class Abs(Pointwise):
    fn = staticmethod(torch.abs)
    fixed_slope = (-1.0, 1.0)
    float_rounding = "exact"


@register("Sqrt", versions=(6, None))
class Sqrt(Pointwise):
    fn = staticmethod(torch.sqrt)


@register("Exp", versions=(6, None))
class Exp(Pointwise):
    fn = staticmethod(torch.exp)


@register("Log", versions=(6, None))
class Log(Pointwise):
    fn = staticmethod(torch.log)


@register("Reciprocal", versions=(6, None))
class Reciprocal(Pointwise):
    fn = staticmethod(torch.reciprocal)


@register("Erf", versions=(9, None))
class Erf(Pointwise):
    fn = staticmethod(torch.erf)
    gate_step = True

    def slope(self):
        """``2/sqrt(pi) e^(-t^2)``: in (0, 2/sqrt(pi)]."""
        from certify.lipschitz.constants import Slope, round_up

        return Slope(0.0, round_up(2 / math.sqrt(math.pi)))


@register("Max", versions=(6, None))
class Max(Variadic):
    fn = staticmethod(torch.maximum)
    float_rounding = "exact"

    def lipschitz(self, ctx):
        """Elementwise max: 1-Lipschitz in the concatenated inputs."""
        return self.combine(ctx, "max", 1)


@register("Min", versions=(6, None))
class Min(Variadic):
    fn = staticmethod(torch.minimum)
    float_rounding = "exact"

    def lipschitz(self, ctx):
        """Elementwise min: 1-Lipschitz in the concatenated inputs."""
        return self.combine(ctx, "max", 1)


@register("Sum", versions=(6, None))
class Sum(Variadic):
    fn = staticmethod(torch.add)

    def lipschitz(self, ctx):
        """A sum of the inputs' bounds."""
        return self.combine(ctx, "sum", 1)


@register("Mean", versions=(6, None))
class Mean(Variadic):
    fn = staticmethod(torch.add)

    def forward(self, *inputs):
        return super().forward(*inputs) / sum(t is not None for t in inputs)

    def lipschitz(self, ctx):
        """The sum divided by the number of inputs."""
        return self.combine(ctx, "sum", len(ctx.input_shapes))


@register("Where", versions=(9, None))
class Where(OnnxOp):
    float_rounding = "exact"

    @classmethod
    def example(cls, op_type, rng):
        """A constant or input-dependent condition choosing between x and a constant or function of x."""
        full = (1, *examples.shape(rng))
        g = examples.Graph(rng, full[1:])
        if rng.random() < 0.3:
            condition = g.node("Cast", [g.derived(examples.broadcastable(rng, full))], to=TensorProto.BOOL)
            family = "varying condition"
        else:
            condition, family = g.const(rng.random(examples.broadcastable(rng, full)) < 0.5, bool), "constant condition"
        other, kind = g.operand(examples.broadcastable(rng, full))
        pair = ["x", other] if rng.random() < 0.5 else [other, "x"]
        return examples.Example(g.model(g.node("Where", [condition, *pair])), f"{family}, {kind} operand")

    def forward(self, condition, x, y):
        return torch.where(condition.to(torch.bool), x, y)

    def lipschitz(self, ctx):
        """A selection with a constant condition; a varying condition jumps."""
        from certify.lipschitz import rules

        if ctx.varying(0):
            return rules.unbounded(ctx, "an input-dependent condition makes the output jump")
        return rules.Combine("max")


@register("Cast", versions=(6, None))
class Cast(OnnxOp):
    """Convert to the dtype ``to``. Float to integer truncates toward zero; nonzero becomes True."""

    float_rounding = "exact"

    def __init__(self, node):
        super().__init__(node)
        to = node.attr("to")
        self.dtype = TORCH_OF_ONNX.get(to) if isinstance(to, int) else None
        if self.dtype is None:
            raise ModelRejected("unsupported_dtype", f"Cast {node.name}: target type {to!r} is not supported")

    @classmethod
    def example(cls, op_type, rng):
        """To every supported type, and back to float."""
        to = int(examples.pick(rng, sorted(TORCH_OF_ONNX)))
        g = examples.Graph(rng, examples.shape(rng))
        back = g.node("Cast", [g.node("Cast", ["x"], to=to)], to=1)
        return examples.Example(g.model(back), f"to {onnx_type_name(to)}")

    def forward(self, x):
        return x.to(self.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dtype={self.dtype}"

    def lipschitz(self, ctx):
        """A cast to a float type at least as precise as its input is exact (an isometry); any other cast rounds,
        and rounding is not Lipschitz (two inputs closer than a rounding step can land a whole step apart)."""
        from certify.lipschitz import rules

        source, dtype = (ctx.input_dtypes[0] if ctx.input_dtypes else None), self.dtype
        finer = source is not None and source.is_floating_point and dtype.is_floating_point and (
            torch.finfo(dtype).eps <= torch.finfo(source).eps and torch.finfo(dtype).max >= torch.finfo(source).max)
        if finer:
            return rules.Linear("isometry")
        return rules.unbounded(ctx, rounding_reason(f"casting {source} to {dtype}"))

    def promote_float32(self) -> None:
        """A cast to float32 is the model's own working precision, not a rounding of it."""
        if self.dtype == torch.float32:
            self.dtype = torch.float64


def add_rule(ctx, subtract: bool = False):
    """Add / Sub: a residual sum of two varying tensors, or a translation (a negation for ``c - x``)."""
    from certify.lipschitz import rules

    if len(ctx.varying_inputs) > 1:
        return rules.Combine("sum")
    if subtract and ctx.varying_inputs == [1]:
        return rules.scale(ctx, torch.tensor(-1.0))
    return rules.translation(ctx)


def rounding_reason(what: str) -> str:
    """Why a rounding operator gets no bound (one wording for every such operator)."""
    return (f"{what} rounds to a coarser grid: not Lipschitz (inputs closer than one rounding step can land a whole "
            "step apart), so no certificate covers it")


def onnx_type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): sums and differences are affine, products and quotients only
    with a constant factor or divisor; a float-to-float Cast passes values unchanged in exact arithmetic."""
    from certify.local.rules import Linear, Passthrough

    Add.relaxation = Linear()
    Sub.relaxation = Linear(negate=(1,))
    Mul.relaxation = Linear(products=(0, 1))
    Div.relaxation = Linear(fixed=(1,), absolute=(1,))
    Neg.relaxation = Linear(negate=(0,))
    Sum.relaxation = Linear()
    Mean.relaxation = Linear()
    Cast.relaxation = Passthrough()


_relaxations()
