"""Operators that move or select data without arithmetic."""

from __future__ import annotations

import torch

from certify.ops.base import OnnxOp, ints
from certify.ops.registry import register


@register("Flatten", versions=(1, None))
class Flatten(OnnxOp):
    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", 1))

    def forward(self, x):
        axis = self.axis if self.axis >= 0 else self.axis + x.dim()
        lead = 1
        for d in x.shape[:axis]:
            lead *= d
        return x.reshape(lead, -1) if x.numel() else x.reshape(lead, 0)


@register("Reshape", versions=(5, None))
class Reshape(OnnxOp):
    def __init__(self, node):
        super().__init__(node)
        self.allowzero = int(node.attr("allowzero", 0))

    def forward(self, x, shape):
        target = ints(shape)
        if not self.allowzero:
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)


@register("Identity", versions=(1, None))
class Identity(OnnxOp):
    def forward(self, x):
        return x


@register("Constant", versions=(1, None))
class Constant(OnnxOp):
    def __init__(self, node):
        super().__init__(node)
        value = None
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in node.attrs:
                value = node.attrs[key]
                break
        if value is None:
            raise ValueError(f"Constant {node.name}: no supported value attribute")
        dtype = torch.float32 if key.startswith("value_float") else (torch.int64 if key.startswith("value_int") else None)
        self.register_buffer("value", torch.as_tensor(value, dtype=dtype).clone())

    def forward(self):
        return self.value
