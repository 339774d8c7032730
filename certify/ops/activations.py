"""Pointwise activations."""

from __future__ import annotations

import torch

from certify.ops.base import OnnxOp
from certify.ops.registry import register


@register("Relu", versions=(1, None))
class Relu(OnnxOp):
    def forward(self, x):
        return torch.relu(x)
