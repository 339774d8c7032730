"""Reductions over axes (Reduce*) and the index-of-extreme operators ArgMax/ArgMin.

``axes`` is an attribute in older opsets and an optional input in newer ones (ReduceSum from 13, the others from
18); both are read. An empty or absent ``axes`` reduces every axis, unless ``noop_with_empty_axes`` is set: then
the reduction runs over no axis at all, which leaves Sum/Mean/Max/Min/Prod the identity and applies the pointwise
part of the others (ReduceL1 gives ``|x|``, ReduceSumSquare ``x**2``), as onnx's reference implementation does.
"""

from __future__ import annotations

import math

import torch

from certify.ops import examples
from certify.ops.base import OnnxOp, ints
from certify.ops.registry import register


def _normalized_axes(axes: list[int], rank: int) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"axis {a} is out of range for a tensor of rank {rank}")
        out.append(a + rank if a < 0 else a)
    return tuple(sorted(set(out)))


def _extreme(dtype: torch.dtype, largest: bool):
    """The value no element of ``dtype`` exceeds (``largest``) or falls below: the identity of Min (Max)."""
    if dtype == torch.bool:
        return largest
    if dtype.is_floating_point:
        return math.inf if largest else -math.inf
    info = torch.iinfo(dtype)
    return info.max if largest else info.min


class Reduce(OnnxOp):
    """Base of Reduce*: reads ``axes``, ``keepdims`` and ``noop_with_empty_axes``; subclasses give ``reduce``.

    ``axes`` is the attribute or the constant axes input when known at conversion (None: all axes, or computed
    at run time). ``float_math``: integer inputs are reduced in float64 and cast back (the ONNX result dtype is
    the input's), as numpy does for the reference results.
    """

    float_math = False

    bound_kind: str | None = None  # how certify.lipschitz bounds this reduction ("mean", "max", "sum", ...)

    def __init__(self, node):
        super().__init__(node)
        self.keepdims = bool(node.attr("keepdims", 1))
        self.noop_with_empty_axes = bool(node.attr("noop_with_empty_axes", 0))
        axes = node.attr("axes")
        if axes is None and node.const(1) is not None:
            axes = ints(torch.as_tensor(node.const(1)))
        self.axes = None if axes is None else [int(a) for a in axes]

    @classmethod
    def example(cls, op_type, rng):
        """Any subset of axes (none, with or without ``noop_with_empty_axes``; negative indices), keepdims."""
        per_sample = examples.shape(rng)
        rank = len(per_sample) + 1
        axes = [int(a) - (rank if rng.random() < 0.3 else 0) for a in range(rank) if rng.random() < 0.5]
        g = examples.Graph(rng, per_sample)
        attrs = {"keepdims": int(rng.random() < 0.5), "noop_with_empty_axes": int(rng.random() < 0.3)}
        inputs = ["x", g.ints(axes)] if axes or rng.random() < 0.5 else ["x"]
        family = f"{len(axes)} axes" + (", noop" if attrs["noop_with_empty_axes"] else "")
        return examples.Example(g.model(g.node(op_type, inputs, **attrs)), family)

    def reduce(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Reduce over the non-empty, sorted ``dims``, keeping them as size-1 dimensions."""
        raise NotImplementedError

    def pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """The reduction over no axis."""
        return x

    def empty_value(self, dtype: torch.dtype):
        """The result over an empty set of elements; None: what ``reduce`` computes there is right."""
        return None

    def forward(self, x, axes=None):
        axes = ints(axes) if axes is not None else self.axes
        if x.dim() == 0 or (not axes and self.noop_with_empty_axes):
            return self.pointwise(x)
        dims = _normalized_axes(axes, x.dim()) if axes else tuple(range(x.dim()))
        kept = [1 if i in dims else s for i, s in enumerate(x.shape)]
        empty = self.empty_value(x.dtype) if any(x.shape[d] == 0 for d in dims) else None
        if empty is not None:
            y = torch.full(kept, empty, dtype=x.dtype, device=x.device)
        elif self.float_math and not x.is_floating_point():
            y = self.reduce(x.to(torch.float64), dims).to(x.dtype)
        elif x.dtype == torch.bool:
            y = self.reduce(x.to(torch.uint8), dims).to(torch.bool)
        else:
            y = self.reduce(x, dims).to(x.dtype)
        return y if self.keepdims else y.reshape([s for i, s in enumerate(x.shape) if i not in dims])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", axes={self.axes}, keepdims={self.keepdims}"

    def lipschitz(self, ctx):
        """Over n entries per output (disjoint groups): sum sqrt(n) (L-inf: n), mean 1/sqrt(n) (1), max/min 1, L2
        norm 1 (L-inf: sqrt(n)), L1 norm sqrt(n) (n), log-sum-exp 1 (gradient softmax, ||p||_2 <= ||p||_1 = 1); sum of
        squares and product are not Lipschitz. None without a kind."""
        from certify.lipschitz import constants, rules

        if not self.bound_kind:
            return None
        n, kind = self.group_size(ctx), self.bound_kind
        linf = ctx.norm == "linf"
        values = {"sum": n if linf else math.sqrt(n), "mean": 1.0 if linf else 1 / math.sqrt(n), "max": 1.0,
                  "l2": math.sqrt(n) if linf else 1.0, "l1": n if linf else math.sqrt(n), "logsumexp": 1.0}
        if kind not in values:
            return rules.unbounded(ctx, f"Reduce{kind} has no global Lipschitz constant")
        bound = constants.exact_constant(values[kind], method="reduction", norm=ctx.norm)
        return rules.Linear("bounded", bound=bound) if kind in ("sum", "mean") else bound

    def group_size(self, ctx) -> int:
        """Entries per output, from the reduced axes of the batch-1 input (not from the output's per-sample
        shape: a reduction over the batch axis drops the batch dimension and shifts every axis after it)."""
        axes = self.axes if ctx.const(1) is None else ints(ctx.const(1))
        full = (1, *ctx.in_shape)
        if not axes:
            return 1 if self.noop_with_empty_axes else math.prod(full)
        return math.prod(full[d] for d in _normalized_axes(axes, len(full)))


@register("ReduceSum", versions=(1, None))
class ReduceSum(Reduce):
    float_rounding = "nonnegative"

    def reduce(self, x, dims):
        return torch.sum(x, dim=dims, keepdim=True)

    bound_kind = "sum"  # sqrt(n) over disjoint groups of n.


@register("ReduceMean", versions=(1, None))
class ReduceMean(Reduce):
    float_rounding = "nonnegative"
    float_math = True

    def reduce(self, x, dims):
        return torch.mean(x, dim=dims, keepdim=True)

    bound_kind = "mean"  # 1/sqrt(n) over disjoint groups of n.


@register("ReduceMax", versions=(1, None))
class ReduceMax(Reduce):
    float_rounding = "exact"

    def reduce(self, x, dims):
        return torch.amax(x, dim=dims, keepdim=True)

    def empty_value(self, dtype):
        return _extreme(dtype, largest=False)

    bound_kind = "max"  # A selection: 1.


@register("ReduceMin", versions=(1, None))
class ReduceMin(Reduce):
    float_rounding = "exact"

    def reduce(self, x, dims):
        return torch.amin(x, dim=dims, keepdim=True)

    def empty_value(self, dtype):
        return _extreme(dtype, largest=True)

    bound_kind = "max"  # A selection: 1.


@register("ReduceProd", versions=(1, None))
class ReduceProd(Reduce):
    def reduce(self, x, dims):
        for d in dims:  # torch.prod takes one dimension at a time
            x = torch.prod(x, dim=d, keepdim=True)
        return x

    bound_kind = "prod"  # No global constant.


@register("ReduceL1", versions=(1, None))
class ReduceL1(Reduce):
    pointwise = staticmethod(torch.abs)

    def reduce(self, x, dims):
        return torch.sum(torch.abs(x), dim=dims, keepdim=True)

    bound_kind = "l1"  # sqrt(n).


@register("ReduceL2", versions=(1, None))
class ReduceL2(Reduce):
    float_math = True
    pointwise = staticmethod(torch.abs)

    def reduce(self, x, dims):
        return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=True))

    bound_kind = "l2"  # A norm: 1.


@register("ReduceSumSquare", versions=(1, None))
class ReduceSumSquare(Reduce):
    pointwise = staticmethod(torch.square)

    def reduce(self, x, dims):
        return torch.sum(x * x, dim=dims, keepdim=True)

    bound_kind = "sumsquare"  # No global constant.


@register("ReduceLogSumExp", versions=(1, None))
class ReduceLogSumExp(Reduce):
    float_math = True

    def reduce(self, x, dims):
        return torch.logsumexp(x, dim=dims, keepdim=True)

    def empty_value(self, dtype):
        return -math.inf if dtype.is_floating_point else None

    bound_kind = "logsumexp"  # Gradient is a softmax: 1.


class ArgExtreme(OnnxOp):
    """ArgMax/ArgMin along ``axis`` (int64 indices); ties go to the first index, or the last with
    ``select_last_index``."""

    @staticmethod
    def fn(x, dim, keepdim):
        raise NotImplementedError

    @classmethod
    def example(cls, op_type, rng):
        per_sample = examples.shape(rng)
        axis = int(rng.integers(-len(per_sample) - 1, len(per_sample) + 1))
        return examples.unary(op_type, rng, per_sample=per_sample, axis=axis, keepdims=int(rng.random() < 0.5),
                              select_last_index=int(rng.random() < 0.5))

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", 0))
        self.keepdims = bool(node.attr("keepdims", 1))
        self.select_last_index = bool(node.attr("select_last_index", 0))

    def forward(self, x):
        (axis,) = _normalized_axes([self.axis], x.dim())
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        if not self.select_last_index:
            return self.fn(x, dim=axis, keepdim=self.keepdims)
        return x.shape[axis] - 1 - self.fn(x.flip(axis), dim=axis, keepdim=self.keepdims)

    def lipschitz(self, ctx):
        """An index output jumps: unbounded."""
        from certify.lipschitz import rules

        return rules.unbounded(ctx, "an index output jumps")


@register("ArgMax", versions=(1, None))
class ArgMax(ArgExtreme):
    fn = staticmethod(torch.argmax)


@register("ArgMin", versions=(1, None))
class ArgMin(ArgExtreme):
    fn = staticmethod(torch.argmin)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): sums and means over constant axes are linear."""
    from certify.local.rules import Linear

    ReduceSum.relaxation = Linear(fixed=(1,))
    ReduceMean.relaxation = Linear(fixed=(1,))


_relaxations()
