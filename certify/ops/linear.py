"""Dense linear operators: Gemm and MatMul.

The weights arrive as ordinary inputs (``graph.constant(name)`` gives them when they are constants), so the
modules hold only the attributes that shape the product.
"""

from __future__ import annotations

import torch

from certify.ops import examples
from certify.ops.base import OnnxOp, second_operand_is_own
from certify.ops.registry import register


@register("Gemm", versions=(7, None))
class Gemm(OnnxOp):
    """Y = alpha * A' B' + beta * C, with A' = A^T if transA, B' = B^T if transB; C (optional from opset 11)
    broadcasts to the product's shape."""

    own_first_axis = second_operand_is_own

    def __init__(self, node):
        super().__init__(node)
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.trans_a = bool(node.attr("transA", 0))
        self.trans_b = bool(node.attr("transB", 0))

    @classmethod
    def example(cls, op_type, rng):
        """x (1, k) as A or A^T or B or B^T, alpha and beta anywhere, C absent, constant or a function of x."""
        k, m = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        trans_a, trans_b = int(rng.random() < 0.2), int(rng.random() < 0.5)
        attrs = {"alpha": examples.real(rng), "beta": examples.real(rng), "transA": trans_a, "transB": trans_b}
        g = examples.Graph(rng, (k,))
        if rng.random() < 0.8:  # x as A: the product is (M, N)
            inner, rows = (1, k) if trans_a else (k, 1)
            b = examples.values(rng, (m, inner) if trans_b else (inner, m))
            inputs, out, family = ["x", g.const(b)], (rows, m), "x as A" + (", transA" if trans_a else "")
        else:
            inner, cols = (k, 1) if trans_b else (1, k)
            a = examples.values(rng, (inner, m) if trans_a else (m, inner))
            inputs, out, family = [g.const(a), "x"], (m, cols), "x as B"
        if rng.random() < 0.6:
            c, kind = g.operand(examples.broadcastable(rng, out), allow_varying=out == g.x_shape)
            inputs.append(c)
            family += f", {kind} C"
        return examples.Example(g.model(g.node("Gemm", inputs, **attrs)), family)

    def forward(self, a, b, c=None):
        if self.trans_a:
            a = a.transpose(0, 1)
        if self.trans_b:
            b = b.transpose(0, 1)
        y = a @ b
        if self.alpha != 1.0:
            y = y * self.alpha
        if c is not None:
            y = y + (c * self.beta if self.beta != 1.0 else c)
        return y.to(a.dtype)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", alpha={self.alpha}, beta={self.beta}, trans_a={self.trans_a}, trans_b={self.trans_b}"
        )

    def lipschitz(self, ctx):
        """Dense: the weight alpha * B'^T."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0] or self.trans_a:
            return rules.unbounded(ctx, "the weight depends on the input (or A is transposed across the batch)")
        b = ctx.const(1).double()
        return rules.dense(ctx, self.alpha * (b if self.trans_b else b.T))


@register("MatMul", versions=(1, None))
class MatMul(OnnxOp):
    """numpy.matmul semantics (1-D operands promoted and squeezed, batch dimensions broadcast)."""

    def own_first_axis(self, index: int, value) -> bool:
        """A 2-D constant operand is a matrix (its rows are its own), not one row per batch position."""
        return value.dim() == 2

    @classmethod
    def example(cls, op_type, rng):
        """x on the left or the right of a constant (2-D or batched), or of a function of x."""
        per_sample = examples.shape(rng, (1, 3))
        g = examples.Graph(rng, per_sample)
        k, m = g.x_shape[-1], int(rng.integers(1, 5))
        side = examples.pick(rng, ["right", "left", "varying"])
        if side == "right":
            batch = examples.broadcastable(rng, g.x_shape[:-2]) if rng.random() < 0.3 else ()
            inputs, family = ["x", g.const(examples.values(rng, (*batch, k, m)))], f"x @ B{'batched' if batch else ''}"
        elif side == "left":
            rows = g.x_shape[-2] if len(g.x_shape) >= 2 else 1
            inputs, family = [g.const(examples.values(rng, (m, rows))), "x"], "A @ x"
        else:
            inputs, family = ["x", g.node("Transpose", ["x"], perm=list(range(len(g.x_shape) - 2))
                                         + [len(g.x_shape) - 1, len(g.x_shape) - 2])], "x @ x^T"
        return examples.Example(g.model(g.node("MatMul", inputs)), family)

    def forward(self, a, b):
        return torch.matmul(a, b)

    def lipschitz(self, ctx):
        """One constant operand: ``x @ B`` acts on the last axis (norm ||B||), ``A @ x`` on the second to last (norm
        ||A||: L2 its spectral norm, L-inf its largest row sum)."""
        from certify.lipschitz import constants, linear_norms, rules

        if ctx.varying_inputs == [0] and ctx.const(1).dim() == 2:
            return rules.dense(ctx, ctx.const(1).double().T)
        if ctx.varying_inputs == [1] and ctx.const(0).dim() == 2 and len(ctx.input_shapes[1]) >= 2:
            a = ctx.const(0).double()
            if ctx.norm == "l2":
                return rules.Linear("bounded", bound=linear_norms.dense_bound(a, norm=ctx.norm))
            value = float(a.abs().sum(dim=1).max())
            return rules.Linear("bounded", bound=constants.exact_constant(value, method="row sums", norm="linf"))
        if len(ctx.varying_inputs) > 1:
            return rules.product_of_varying(ctx)
        return rules.unbounded(ctx, "batched constant operand not supported")


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): both are affine when one product operand is constant."""
    from certify.local.rules import Linear

    Gemm.relaxation = Linear(products=(0, 1))
    MatMul.relaxation = Linear(products=(0, 1))


_relaxations()
