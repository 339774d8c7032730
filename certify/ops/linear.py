"""Dense linear operators: Gemm and MatMul."""

from __future__ import annotations

import torch

from certify.ops.base import OnnxOp
from certify.ops.registry import register


@register("Gemm", versions=(1, None))
class Gemm(OnnxOp):
    """Y = alpha * A' B' + beta * C, with A' = A^T if transA, B' = B^T if transB."""

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
        return y


@register("MatMul", versions=(1, None))
class MatMul(OnnxOp):
    """numpy.matmul semantics (broadcast batch dimensions)."""

    def forward(self, a, b):
        return torch.matmul(a, b)
