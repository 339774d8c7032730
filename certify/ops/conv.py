"""Convolutions (Conv, ConvTranspose) and the sliding-window geometry they share with pooling.

ONNX pads are ``[begin_1, ..., begin_n, end_1, ..., end_n]`` and may be asymmetric, and ``auto_pad`` makes them
depend on the input size, so every window operator pads explicitly (``F.pad``) and runs torch with zero padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certify.errors import ModelRejected
from certify.ops import examples
from certify.ops.base import OnnxOp, second_operand_is_own
from certify.ops.registry import register

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def torch_pad_list(begin, end) -> list[int]:
    """ONNX per-axis (begin, end) pads in the last-axis-first order ``F.pad`` wants."""
    pad: list[int] = []
    for b, e in zip(reversed(list(begin)), reversed(list(end))):
        pad += [int(b), int(e)]
    return pad


def _auto_pad_of(node) -> str:
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in AUTO_PADS:
        raise ModelRejected(
            "invalid_attribute", f"{node.op_type} {node.name}: auto_pad {auto_pad!r} is not one of {AUTO_PADS}"
        )
    return auto_pad


def _weight_kernel_shape(node) -> list[int] | None:
    """Kernel shape read from the weight (input 1) when it is constant or its shape was inferred."""
    weight = node.const(1)
    if weight is not None:
        return [int(d) for d in weight.shape[2:]]
    shape = node.input_shape(1)
    if shape is not None and all(d is not None for d in shape[2:]):
        return [int(d) for d in shape[2:]]
    return None


class SlidingWindow:
    """Attributes and geometry of a strided, dilated, padded window over the spatial axes (ONNX Conv/Pool rules).

    Fields: ``kernel_shape``, ``strides``, ``dilations``, ``pads`` (explicit begin..., end...; all zeros when
    ``auto_pad`` decides them), ``auto_pad``, ``ceil_mode``. Empty lists mean the ONNX defaults (ones / zeros).
    """

    kernel_shape: list[int] | None
    strides: list[int]
    dilations: list[int]
    pads: list[int]
    auto_pad: str
    ceil_mode: int

    def read_window_attributes(self, node, kernel_shape) -> None:
        self.kernel_shape = None if kernel_shape is None else [int(k) for k in kernel_shape]
        self.strides = [int(s) for s in node.attr("strides", [])]
        self.dilations = [int(d) for d in node.attr("dilations", [])]
        self.pads = [int(p) for p in node.attr("pads", [])]
        self.auto_pad = _auto_pad_of(node)
        self.ceil_mode = int(node.attr("ceil_mode", 0))
        if any(s <= 0 for s in self.strides) or any(d <= 0 for d in self.dilations):
            raise ModelRejected("invalid_attribute", f"{node.op_type} {node.name}: strides and dilations must be > 0")
        if self.kernel_shape is not None and any(k <= 0 for k in self.kernel_shape):
            raise ModelRejected("invalid_attribute", f"{node.op_type} {node.name}: kernel_shape must be > 0")

    def _per_axis(self, values: list[int], nd: int, default: int, what: str) -> list[int]:
        if not values:
            return [default] * nd
        if len(values) != nd:
            raise ValueError(f"{self.op_type} {self.onnx_name}: {what} has {len(values)} values for {nd} spatial axes")
        return list(values)

    def axis_strides(self, nd: int) -> list[int]:
        return self._per_axis(self.strides, nd, 1, "strides")

    def axis_dilations(self, nd: int) -> list[int]:
        return self._per_axis(self.dilations, nd, 1, "dilations")

    def window_spans(self, kernel_shape) -> list[int]:
        """Extent of each dilated window: (k - 1) * d + 1."""
        dilations = self.axis_dilations(len(kernel_shape))
        return [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]

    def _kernel(self, kernel_shape) -> list[int]:
        kernel = kernel_shape if kernel_shape is not None else self.kernel_shape
        if kernel is None:
            raise ValueError(f"{self.op_type} {self.onnx_name}: kernel shape unknown")
        return [int(k) for k in kernel]

    def resolved_pads(self, input_spatial_shape, kernel_shape=None) -> list[int]:
        """Explicit pads ``[begin..., end...]`` for this input size (applies ``auto_pad``)."""
        sizes = [int(s) for s in input_spatial_shape]
        nd = len(sizes)
        if self.auto_pad == "VALID":
            return [0] * (2 * nd)
        if self.auto_pad == "NOTSET":
            return self._per_axis(self.pads, 2 * nd, 0, "pads")
        spans = self.window_spans(self._kernel(kernel_shape))
        strides = self.axis_strides(nd)
        begin, end = [], []
        for size, span, stride in zip(sizes, spans, strides):
            out = -(-size // stride)
            total = max(0, (out - 1) * stride + span - size)
            small, large = total // 2, total - total // 2
            begin.append(small if self.auto_pad == "SAME_UPPER" else large)
            end.append(large if self.auto_pad == "SAME_UPPER" else small)
        return begin + end

    def output_spatial_shape(self, input_spatial_shape, kernel_shape=None) -> list[int]:
        """Output size per spatial axis (ONNX rules, including ceil_mode's 'last window starts inside')."""
        sizes = [int(s) for s in input_spatial_shape]
        nd = len(sizes)
        strides = self.axis_strides(nd)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return [-(-size // stride) for size, stride in zip(sizes, strides)]
        kernel = self._kernel(kernel_shape)
        if len(kernel) != nd:
            raise ValueError(f"{self.op_type} {self.onnx_name}: kernel of rank {len(kernel)} for {nd} spatial axes")
        spans = self.window_spans(kernel)
        pads = self.resolved_pads(sizes, kernel)
        out = []
        for i, (size, span, stride) in enumerate(zip(sizes, spans, strides)):
            room = size + pads[i] + pads[nd + i] - span
            if room < 0:
                raise ValueError(f"{self.op_type} {self.onnx_name}: window {span} larger than padded input on axis {i}")
            n = (-(-room // stride) if self.ceil_mode else room // stride) + 1
            if self.ceil_mode and (n - 1) * stride >= size + pads[i]:
                n -= 1
            out.append(n)
        return out

    def padded_for_windows(self, x: torch.Tensor, value: float, kernel_shape=None) -> tuple[torch.Tensor, list[int]]:
        """``x`` padded with ``value`` so every output window lies inside it (extra end padding for ceil_mode).

        Returns the padded tensor and the output spatial shape.
        """
        sizes = list(x.shape[2:])
        nd = len(sizes)
        kernel = self._kernel(kernel_shape)
        pads = self.resolved_pads(sizes, kernel)
        out = self.output_spatial_shape(sizes, kernel)
        spans = self.window_spans(kernel)
        strides = self.axis_strides(nd)
        end = [max(pads[nd + i], (out[i] - 1) * strides[i] + spans[i] - sizes[i] - pads[i]) for i in range(nd)]
        pad = torch_pad_list(pads[:nd], end)
        if any(pad):
            x = F.pad(x, pad, value=value)
        return x, out


def crop_to(y: torch.Tensor, spatial_shape) -> torch.Tensor:
    """Keep the first ``spatial_shape`` positions of each spatial axis."""
    index = (slice(None), slice(None)) + tuple(slice(0, int(n)) for n in spatial_shape)
    return y[index]


def _spatial_rank(x: torch.Tensor, op) -> int:
    nd = x.dim() - 2
    if nd not in _CONV:
        raise ValueError(f"{op.op_type} {op.onnx_name}: {nd} spatial axes, only 1-D, 2-D and 3-D are supported")
    return nd


@register("Conv", versions=(1, None))
class Conv(SlidingWindow, OnnxOp):
    """N-d (1-3) cross-correlation with strides, dilations, groups and explicit or automatic padding."""

    own_first_axis = second_operand_is_own

    @classmethod
    def example(cls, op_type, rng):
        """1-D and 2-D, groups, kernels up to larger than the (padded) map, strides, dilations, auto_pad, bias."""
        return _conv_example(op_type, rng, transposed=False)

    def __init__(self, node):
        super().__init__(node)
        self.read_window_attributes(node, node.attr("kernel_shape") or _weight_kernel_shape(node))
        self.group = int(node.attr("group", 1))
        if self.group <= 0:
            raise ModelRejected("invalid_attribute", f"Conv {node.name}: group must be > 0")

    def forward(self, x, w, b=None):
        nd = _spatial_rank(x, self)
        kernel = list(w.shape[2:])
        if self.kernel_shape is not None and list(self.kernel_shape) != kernel:
            raise ValueError(f"Conv {self.onnx_name}: kernel_shape {self.kernel_shape} differs from weight {kernel}")
        pads = self.resolved_pads(x.shape[2:], kernel)
        padding = list(pads[:nd])
        if pads[:nd] != pads[nd:]:  # torch pads symmetrically; uneven pads need an explicit copy first
            x = F.pad(x, torch_pad_list(pads[:nd], pads[nd:]))
            padding = 0
        return _CONV[nd](x, w, b, self.axis_strides(nd), padding, self.axis_dilations(nd), self.group)

    def lipschitz(self, ctx):
        """Linear: this kernel with the resolved strides, pads and dilations."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "the kernel depends on the input")
        weight = ctx.const(1).detach().double()
        in_spatial = ctx.in_shape[1:]
        nd = len(in_spatial)
        pads = self.resolved_pads(in_spatial, list(weight.shape[2:]))
        return rules.Linear("conv", weight=weight, conv={"stride": list(self.axis_strides(nd)), "padding": list(pads),
                                                         "dilation": list(self.axis_dilations(nd)),
                                                         "groups": int(self.group)})


@register("ConvTranspose", versions=(1, None))
class ConvTranspose(SlidingWindow, OnnxOp):
    """Transposed convolution; pads crop the full result, ``output_padding`` / ``output_shape`` extend it.

    Extra fields: ``group``, ``output_padding``, ``output_shape`` (empty when not given).
    """

    own_first_axis = second_operand_is_own

    @classmethod
    def example(cls, op_type, rng):
        """As Conv, plus output_padding and output_shape."""
        return _conv_example(op_type, rng, transposed=True)

    def __init__(self, node):
        super().__init__(node)
        self.read_window_attributes(node, node.attr("kernel_shape") or _weight_kernel_shape(node))
        self.group = int(node.attr("group", 1))
        self.output_padding = [int(p) for p in node.attr("output_padding", [])]
        self.output_shape = [int(s) for s in node.attr("output_shape", [])]
        if self.group <= 0:
            raise ModelRejected("invalid_attribute", f"ConvTranspose {node.name}: group must be > 0")

    def full_spatial_shape(self, input_spatial_shape, kernel_shape=None) -> list[int]:
        """Size of the uncropped result per axis: stride * (in - 1) + output_padding + (k - 1) * d + 1."""
        sizes = [int(s) for s in input_spatial_shape]
        nd = len(sizes)
        spans = self.window_spans(self._kernel(kernel_shape))
        extra = self._per_axis(self.output_padding, nd, 0, "output_padding")
        return [s * (n - 1) + e + span for s, n, e, span in zip(self.axis_strides(nd), sizes, extra, spans)]

    def resolved_pads(self, input_spatial_shape, kernel_shape=None) -> list[int]:
        """Explicit crop ``[begin..., end...]`` of the full result, from ``output_shape`` / ``auto_pad`` / ``pads``."""
        sizes = [int(s) for s in input_spatial_shape]
        nd = len(sizes)
        wanted = None
        if self.output_shape:
            wanted = self.output_shape[-nd:]
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            wanted = [n * s for n, s in zip(sizes, self.axis_strides(nd))]
        if wanted is None:
            if self.auto_pad == "VALID":
                return [0] * (2 * nd)
            return self._per_axis(self.pads, 2 * nd, 0, "pads")
        full = self.full_spatial_shape(sizes, kernel_shape)
        begin, end = [], []
        for total in (f - w for f, w in zip(full, wanted)):
            small, large = total // 2, total - total // 2
            begin.append(small if self.auto_pad == "SAME_UPPER" else large)
            end.append(large if self.auto_pad == "SAME_UPPER" else small)
        return begin + end

    def output_spatial_shape(self, input_spatial_shape, kernel_shape=None) -> list[int]:
        nd = len(input_spatial_shape)
        full = self.full_spatial_shape(input_spatial_shape, kernel_shape)
        pads = self.resolved_pads(input_spatial_shape, kernel_shape)
        return [f - pads[i] - pads[nd + i] for i, f in enumerate(full)]

    def forward(self, x, w, b=None):
        nd = _spatial_rank(x, self)
        kernel = list(w.shape[2:])
        strides, dilations = self.axis_strides(nd), self.axis_dilations(nd)
        y = _CONV_TRANSPOSE[nd](x, w, None, strides, 0, 0, self.group, dilations)
        full = self.full_spatial_shape(x.shape[2:], kernel)
        pads = self.resolved_pads(x.shape[2:], kernel)
        # F.pad crops with negative amounts and zero-extends (output_padding) with positive ones.
        end = [f - n - p for f, n, p in zip(full, y.shape[2:], pads[nd:])]
        y = F.pad(y, torch_pad_list([-p for p in pads[:nd]], end))
        if b is not None:
            y = y + b.reshape((1, -1) + (1,) * nd)
        return y

    def lipschitz(self, ctx):
        """Linear: the adjoint of the strided convolution with the same kernel read on the uncropped output (same
        norm); cropping (pads) and zero-extension (output_padding) never increase it. In L-inf the bound is the max
        row sum of |A|: per OUTPUT entry, the sum over the inputs it reads."""
        from certify.lipschitz import linear_norms, rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "the kernel depends on the input")
        weight = ctx.const(1).detach().double()
        nd = weight.dim() - 2
        geometry = {"stride": list(self.axis_strides(nd)), "padding": [0] * (2 * nd),
                    "dilation": list(self.axis_dilations(nd)), "groups": int(self.group)}
        if ctx.norm == "linf":
            bound = linear_norms.conv_bound(weight, ctx.in_shape, **geometry, transposed=True, norm="linf")
        else:
            full = (weight.shape[1] * int(self.group),
                    *[int(f) for f in self.full_spatial_shape(ctx.in_shape[1:], list(weight.shape[2:]))])
            bound = linear_norms.conv_bound(weight, full, **geometry, norm="l2")
        bound.lower = None
        bound.exact = False
        return rules.Linear("bounded", bound=bound)


def _conv_example(op_type: str, rng, transposed: bool):
    groups = int(rng.integers(1, 3))
    c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 3))
    per_sample = examples.spatial_input(rng, c_in)
    spatial = per_sample[1:]
    kernel = tuple(int(rng.integers(1, s + 3)) for s in spatial)
    g = examples.Graph(rng, per_sample)
    attrs = examples.window(rng, spatial, kernel)
    family = f"{len(spatial)}-D, group {groups}" + (", kernel > map" if any(k > s for k, s in zip(kernel, spatial))
                                                    else "")
    shape = (c_in, c_out // groups, *kernel) if transposed else (c_out, c_in // groups, *kernel)
    weight = examples.values(rng, shape) * (rng.random() > 0.05)
    if transposed:
        stride_or_dilation = [max(s, d) for s, d in zip(attrs["strides"], attrs.get("dilations", [1] * len(spatial)))]
        if rng.random() < 0.4:
            attrs["output_padding"] = [int(rng.integers(0, m)) for m in stride_or_dilation]
        if rng.random() < 0.15 and attrs.get("auto_pad") is None:
            attrs.pop("pads")
            attrs["output_shape"] = [int(s) * st for s, st in zip(spatial, attrs["strides"])]
    inputs = ["x", g.const(weight)]
    if rng.random() < 0.5:
        inputs.append(g.const(examples.values(rng, (c_out,))))
    return examples.Example(g.model(g.node(op_type, inputs, group=groups, **attrs)), family)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): affine in the input (weights constant)."""
    from certify.local.rules import Linear

    Conv.relaxation = Linear(products=(0, 1))
    ConvTranspose.relaxation = Linear(products=(0, 1))


_relaxations()
