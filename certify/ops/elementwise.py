"""Broadcasting elementwise arithmetic."""

from __future__ import annotations

from certify.ops.base import OnnxOp
from certify.ops.registry import register


@register("Add", versions=(1, None))
class Add(OnnxOp):
    def forward(self, a, b):
        return a + b
