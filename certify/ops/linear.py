"""Dense linear operators: Gemm and MatMul.

The weights arrive as ordinary inputs (``graph.constant(name)`` gives them when they are constants), so the
modules hold only the attributes that shape the product.
"""

from __future__ import annotations

import torch

from certify.ops.base import OnnxOp
from certify.ops.registry import register


@register("Gemm", versions=(7, None))
class Gemm(OnnxOp):
    """Y = alpha * A' B' + beta * C, with A' = A^T if transA, B' = B^T if transB; C (optional from opset 11)
    broadcasts to the product's shape."""

    def __init__(self, node):
        super().__init__(node)
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.trans_a = bool(node.attr("transA", 0))
        self.trans_b = bool(node.attr("transB", 0))

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
        from certify.lipschitz import network

        return network.gemm(ctx, self.alpha, self.trans_a, self.trans_b)


@register("MatMul", versions=(1, None))
class MatMul(OnnxOp):
    """numpy.matmul semantics (1-D operands promoted and squeezed, batch dimensions broadcast)."""

    def forward(self, a, b):
        return torch.matmul(a, b)

    def lipschitz(self, ctx):
        """Dense with the constant operand."""
        from certify.lipschitz import network

        return network.matmul(ctx)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): both are affine when one product operand is constant."""
    from certify.local.rules import Linear

    Gemm.relaxation = Linear(products=(0, 1))
    MatMul.relaxation = Linear(products=(0, 1))


_relaxations()
