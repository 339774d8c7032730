"""Convolutions."""

from __future__ import annotations

import torch.nn.functional as F

from certify.ops.base import OnnxOp
from certify.ops.registry import register


@register("Conv", versions=(1, None))
class Conv(OnnxOp):
    """N-d convolution; explicit ``pads`` (begin..., end...) or ``auto_pad``. Placeholder: 2-D, explicit pads."""

    def __init__(self, node):
        super().__init__(node)
        self.strides = list(node.attr("strides", []))
        self.pads = list(node.attr("pads", []))
        self.dilations = list(node.attr("dilations", []))
        self.group = int(node.attr("group", 1))

    def forward(self, x, w, b=None):
        nd = x.dim() - 2
        strides = self.strides or [1] * nd
        dilations = self.dilations or [1] * nd
        pads = self.pads or [0] * (2 * nd)
        pad = []
        for i in reversed(range(nd)):
            pad += [pads[i], pads[i + nd]]
        if any(pad):
            x = F.pad(x, pad)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return conv(x, w, b, strides, 0, dilations, self.group)
