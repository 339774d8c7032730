"""Broadcasting elementwise arithmetic, pointwise math functions, selection and dtype casts.

Every operator is a torch function of its inputs, so attacks can differentiate through it. Broadcasting follows
numpy (ONNX multidirectional broadcasting is numpy's), which torch implements as well.
"""

from __future__ import annotations

import functools

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

    def lipschitz(self, ctx):
        """The activation's slope range from its op type and attributes (``constants.activation_slope``)."""
        from certify.lipschitz import network

        return network.activation(self.op_type, ctx, **{name: getattr(self, name) for name in self.attributes})


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


@register("Add", versions=(7, None))
class Add(Binary):
    fn = staticmethod(torch.add)

    def lipschitz(self, ctx):
        """A residual sum of varying tensors, or a translation."""
        from certify.lipschitz import network

        return network.add(ctx)


@register("Sub", versions=(7, None))
class Sub(Binary):
    fn = staticmethod(torch.sub)

    def lipschitz(self, ctx):
        """A difference of varying tensors, or a translation / negation."""
        from certify.lipschitz import network

        return network.add(ctx, subtract=True)


@register("Mul", versions=(7, None))
class Mul(Binary):
    fn = staticmethod(torch.mul)

    def lipschitz(self, ctx):
        """A constant scale; two varying factors are unbounded."""
        from certify.lipschitz import network

        return network.mul(ctx)


@register("Div", versions=(7, None))
class Div(Binary):
    """Integer division truncates toward zero (as C does), which is what ONNX runtimes and test cases use."""

    @staticmethod
    def fn(a, b):
        if a.is_floating_point():
            return torch.div(a, b)
        return torch.div(a, b, rounding_mode="trunc")

    def lipschitz(self, ctx):
        """Division by a constant; a varying divisor is unbounded."""
        from certify.lipschitz import network

        return network.div(ctx)


@register("Pow", versions=(7, None))
class Pow(Binary):
    """``x ** y`` with the dtype of ``x``; the exponent may have another dtype (opset 12+)."""

    @staticmethod
    def fn(x, y):
        if x.is_floating_point() or not y.is_floating_point():
            return torch.pow(x, y.to(x.dtype))
        # integer base, fractional exponent: compute in float64, then truncate back like a C cast
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)

    def lipschitz(self, ctx):
        """No global constant."""
        from certify.lipschitz import network

        return network.unbounded(ctx, "powers are not globally Lipschitz")


@register("Neg", versions=(6, None))
class Neg(Pointwise):
    fn = staticmethod(torch.neg)


@register("Abs", versions=(6, None))
class Abs(Pointwise):
    fn = staticmethod(torch.abs)


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


@register("Max", versions=(6, None))
class Max(Variadic):
    fn = staticmethod(torch.maximum)

    def lipschitz(self, ctx):
        """Elementwise max: 1-Lipschitz in the concatenated inputs."""
        from certify.lipschitz import network

        return network.variadic(ctx, "max", 1)


@register("Min", versions=(6, None))
class Min(Variadic):
    fn = staticmethod(torch.minimum)

    def lipschitz(self, ctx):
        """Elementwise min: 1-Lipschitz in the concatenated inputs."""
        from certify.lipschitz import network

        return network.variadic(ctx, "max", 1)


@register("Sum", versions=(6, None))
class Sum(Variadic):
    fn = staticmethod(torch.add)

    def lipschitz(self, ctx):
        """A sum of the inputs' bounds."""
        from certify.lipschitz import network

        return network.variadic(ctx, "sum", 1)


@register("Mean", versions=(6, None))
class Mean(Variadic):
    fn = staticmethod(torch.add)

    def forward(self, *inputs):
        return super().forward(*inputs) / sum(t is not None for t in inputs)

    def lipschitz(self, ctx):
        """The sum divided by the number of inputs."""
        from certify.lipschitz import network

        return network.variadic(ctx, "sum", len(ctx.input_shapes))


@register("Where", versions=(9, None))
class Where(OnnxOp):
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
        from certify.lipschitz import network

        return network.where(ctx)


@register("Cast", versions=(6, None))
class Cast(OnnxOp):
    """Convert to the dtype ``to``. Float to integer truncates toward zero; nonzero becomes True."""

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
        """Float casts are isometries; casts to integers round."""
        from certify.lipschitz import network

        return network.cast(ctx, self.dtype)


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
