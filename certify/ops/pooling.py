"""Pooling: MaxPool (with the optional Indices output), AveragePool, GlobalAveragePool, GlobalMaxPool.

Windows follow ONNX, not torch: the input is padded explicitly (asymmetric pads, ``auto_pad``, ceil_mode's extra
end padding) and torch pools the padded tensor without padding of its own. Average pooling is a sum over the window
(a convolution with a kernel of ones, so dilations work) divided by a count computed the same way from a mask of
the positions that count (the input only, or also the explicit pads with ``count_include_pad``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from certify.errors import ModelRejected
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.constants import exact_constant, round_up, selection_bound
from certify.ops import examples
from certify.ops.base import OnnxOp
from certify.ops.conv import SlidingWindow, crop_to
from certify.ops.registry import register

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _spatial_rank(x: torch.Tensor, op) -> int:
    nd = x.dim() - 2
    if nd not in _MAX_POOL:
        raise ValueError(f"{op.op_type} {op.onnx_name}: {nd} spatial axes, only 1-D, 2-D and 3-D are supported")
    return nd


class _Pool(SlidingWindow, OnnxOp):
    @classmethod
    def example(cls, op_type, rng):
        """Kernels up to the padded map, strides, pads below the kernel, dilations (MaxPool), ceil_mode,
        count_include_pad (AveragePool)."""
        per_sample = examples.spatial_input(rng, int(rng.integers(1, 3)))
        spatial = per_sample[1:]
        kernel = tuple(int(rng.integers(1, s + 2)) for s in spatial)
        attrs = examples.window(rng, spatial, kernel, pads_below_kernel=True, dilations=op_type == "MaxPool")
        attrs["ceil_mode"] = int(rng.random() < 0.3)
        if op_type == "AveragePool":
            attrs["count_include_pad"] = int(rng.random() < 0.5)
        family = f"{len(spatial)}-D" + (", ceil" if attrs["ceil_mode"] else "") + (
            f", {attrs['auto_pad']}" if "auto_pad" in attrs else "")
        return examples.unary(op_type, rng, family, per_sample=per_sample, kernel_shape=list(kernel), **attrs)

    def __init__(self, node):
        super().__init__(node)
        kernel_shape = node.attr("kernel_shape")
        if not kernel_shape:
            raise ModelRejected("invalid_attribute", f"{node.op_type} {node.name}: kernel_shape is required")
        self.read_window_attributes(node, kernel_shape)

    def pool_geometry(self, ctx) -> tuple:
        """``(input shape, output shape, kernel, strides, pads, dilations)`` the pooling bounds read."""
        in_spatial = ctx.in_shape[1:]
        nd = len(in_spatial)
        return (ctx.in_shape, ctx.out_shape, self.kernel_shape, self.axis_strides(nd), self.resolved_pads(in_spatial),
                self.axis_dilations(nd))


def _lowest(dtype: torch.dtype) -> float | int:
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def onnx_flat_indices(padded_index: torch.Tensor, padded_shape, begin_pads, input_shape, column_major: bool):
    """Turn torch's per-plane flat indices into a padded input into ONNX's indices into the whole unpadded input.

    ONNX counts over the flattened (N, C, *spatial) input; ``storage_order=1`` orders the spatial axes column-major.
    """
    nd = len(padded_shape)
    coords = []
    rest = padded_index
    for size in reversed(padded_shape):
        coords.append(rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    coords = [c - p for c, p in zip(reversed(coords), begin_pads)]  # back to row-major axis order
    sizes = [int(s) for s in input_shape[2:]]
    order = range(nd - 1, -1, -1) if column_major else range(nd)
    flat = torch.zeros_like(padded_index)
    for axis in order:
        flat = flat * sizes[axis] + coords[axis]
    plane = 1
    for s in sizes:
        plane *= s
    n, c = int(input_shape[0]), int(input_shape[1])
    planes = torch.arange(n * c, dtype=flat.dtype).reshape((n, c) + (1,) * nd)
    return planes * plane + flat


@register("MaxPool", versions=(1, None))
class MaxPool(_Pool):
    """Max over each window; padding never wins. Extra fields: ``storage_order``, ``with_indices``.

    Indices (second output) follow ONNX: flat positions in the whole input tensor (N, C, spatial...), spatial axes
    row-major, or column-major with ``storage_order=1``.
    """

    float_rounding = "exact"
    #: Each output is the max of its window: ``|dz_W| <= max_{j in W} |du_j|`` (``certify.lipschitz.pooled``).
    max_over_windows = True

    def __init__(self, node):
        super().__init__(node)
        self.storage_order = int(node.attr("storage_order", 0))
        self.with_indices = len(node.outputs) > 1 and bool(node.outputs[1])

    def forward(self, x):
        nd = _spatial_rank(x, self)
        work = x if x.dtype.is_floating_point or x.dtype == torch.uint8 else x.to(torch.float64)
        padded, out = self.padded_for_windows(work, _lowest(work.dtype))
        strides, dilations = self.axis_strides(nd), self.axis_dilations(nd)
        pooled = _MAX_POOL[nd](padded, self.kernel_shape, strides, 0, dilations, return_indices=self.with_indices)
        if not self.with_indices:
            return crop_to(pooled, out).to(x.dtype)
        values, index = (crop_to(t, out) for t in pooled)
        begin = self.resolved_pads(x.shape[2:])[:nd]
        indices = onnx_flat_indices(index, padded.shape[2:], begin, x.shape, column_major=self.storage_order == 1)
        return values.to(x.dtype), indices

    def lipschitz(self, ctx):
        """sqrt(max number of windows reading one input)."""

        return maxpool_bound(*self.pool_geometry(ctx), norm=ctx.norm)


@register("AveragePool", versions=(1, None))
class AveragePool(_Pool):
    """Mean over each window. Extra field: ``count_include_pad`` (explicit pads count, ceil_mode's extra never)."""

    float_rounding = "nonnegative"

    def __init__(self, node):
        super().__init__(node)
        self.count_include_pad = int(node.attr("count_include_pad", 0))

    def counted_positions(self, input_spatial_shape, padded_spatial_shape, dtype=torch.float32) -> torch.Tensor:
        """Mask (1, 1, *padded shape) of the positions an average counts, in the frame ``padded_for_windows`` makes.

        The input always counts; explicit pads count with ``count_include_pad``; ceil_mode's extra padding never does.
        """
        sizes = [int(s) for s in input_spatial_shape]
        nd = len(sizes)
        pads = self.resolved_pads(sizes)
        mask = torch.zeros((1, 1, *[int(s) for s in padded_spatial_shape]), dtype=dtype)
        region = []
        for i, size in enumerate(sizes):
            first = 0 if self.count_include_pad else max(0, pads[i])
            stop = max(0, pads[i]) + size + (max(0, pads[nd + i]) if self.count_include_pad else 0)
            region.append(slice(first, stop))
        mask[(0, 0, *region)] = 1
        return mask

    def window_counts(self, input_spatial_shape, dtype=torch.float32) -> torch.Tensor:
        """How many positions each output window averages over, shape ``(1, 1, *output_spatial_shape)``."""
        probe = torch.zeros((1, 1, *[int(s) for s in input_spatial_shape]), dtype=dtype)
        padded, out = self.padded_for_windows(probe, 0.0)
        return self._window_sums(self.counted_positions(input_spatial_shape, padded.shape[2:], dtype), out)

    def _window_sums(self, padded: torch.Tensor, out) -> torch.Tensor:
        """Sum over every window of an already padded (N, C, spatial...) tensor: a convolution with ones."""
        nd = padded.dim() - 2
        n, c = padded.shape[:2]
        flat = padded.reshape(n * c, 1, *padded.shape[2:])
        kernel = torch.ones((1, 1, *self.kernel_shape), dtype=padded.dtype)
        sums = _CONV[nd](flat, kernel, None, self.axis_strides(nd), 0, self.axis_dilations(nd))
        return crop_to(sums.reshape(n, c, *sums.shape[2:]), out)

    def forward(self, x):
        _spatial_rank(x, self)
        if not x.dtype.is_floating_point:
            raise ValueError(f"AveragePool {self.onnx_name}: input dtype {x.dtype} is not a floating point type")
        padded, out = self.padded_for_windows(x, 0.0)
        counts = self._window_sums(self.counted_positions(x.shape[2:], padded.shape[2:], x.dtype), out)
        return self._window_sums(padded, out) / counts

    def lipschitz(self, ctx):
        """Linear: Kronecker product of 1-D averaging matrices."""
        from certify.lipschitz import rules

        return rules.Linear("bounded", bound=avgpool_bound(
            *self.pool_geometry(ctx), count_include_pad=bool(self.count_include_pad), norm=ctx.norm))


@register("GlobalAveragePool", versions=(1, None))
class GlobalAveragePool(OnnxOp):
    """Mean over all spatial axes, keeping them as size 1."""

    float_rounding = "nonnegative"

    @classmethod
    def example(cls, op_type, rng):
        return examples.unary(op_type, rng, per_sample=examples.spatial_input(rng, int(rng.integers(1, 4))))

    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x

    def lipschitz(self, ctx):
        """Linear: 1/sqrt(spatial size)."""
        from certify.lipschitz import rules

        return rules.Linear("bounded", bound=global_avgpool_bound(ctx.in_shape, ctx.norm))


@register("GlobalMaxPool", versions=(1, None))
class GlobalMaxPool(OnnxOp):
    """Max over all spatial axes, keeping them as size 1."""

    float_rounding = "exact"

    @classmethod
    def example(cls, op_type, rng):
        return examples.unary(op_type, rng, per_sample=examples.spatial_input(rng, int(rng.integers(1, 4))))

    def forward(self, x):
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x

    def lipschitz(self, ctx):
        """Each input is read by one window: 1."""
        from certify.lipschitz import constants

        return constants.selection_bound(1, ctx.norm)


# --------------------------------------------------------------------------------------------------------------
# bounds (Lipschitz constants of this family; ``certify.lipschitz`` composes them)


def _window_counts(size: int, out: int, kernel: int, stride: int, pad_begin: int, dilation: int) -> np.ndarray:
    """For every input position along one axis, how many pooling windows read it (padding excluded)."""
    counts = np.zeros(size, dtype=np.int64)
    for o in range(out):
        start = o * stride - pad_begin
        for t in range(kernel):
            p = start + t * dilation
            if 0 <= p < size:
                counts[p] += 1
    return counts


def _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations):
    spatial = list(input_shape[1:])
    nd = len(spatial)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    out = list(output_shape[1:])
    return [(spatial[i], out[i], int(kernel[i]), int(strides[i]), int(pads[i]), int(dilations[i])) for i in range(nd)]


def maxpool_bound(input_shape, output_shape, kernel, strides=None, pads=None, dilations=None,
                  norm: str = "l2") -> LayerBound:
    """Max-pooling: ``sqrt(max number of windows reading one input)``; for stride <= kernel without padding or
    dilation that is ``sqrt(prod ceil(k_i / s_i))``. Overlapping windows (3x3 stride 2: 2 windows per axis) give 2,
    not 1: the input that is the maximum of all its windows moves all of those outputs at once. Exact.

    ``input_shape`` / ``output_shape`` are per-sample ``(C, *spatial)``.
    """
    started = time.perf_counter()
    multiplicity = 1
    for size, out, k, s, pb, d in _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations):
        multiplicity *= int(_window_counts(size, out, k, s, pb, d).max(initial=0))
    bound = selection_bound(multiplicity, norm, method="max-pool multiplicity")
    bound.ms = (time.perf_counter() - started) * 1e3
    return bound


def _average_matrix(size: int, out: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                    count_include_pad: bool) -> np.ndarray:
    """The 1-D averaging matrix of one axis (PyTorch/ONNX divisor rules: with ``count_include_pad`` the divisor
    counts positions inside the padded range, else only real inputs)."""
    a = np.zeros((out, size))
    for o in range(out):
        start = o * stride - pad_begin
        positions = [start + t * dilation for t in range(kernel)]
        inside = [p for p in positions if 0 <= p < size]
        if count_include_pad:
            divisor = sum(1 for p in positions if -pad_begin <= p < size + pad_end)
        else:
            divisor = len(inside)
        for p in inside:
            a[o, p] += 1.0 / max(divisor, 1)
    return a


def avgpool_bound(input_shape, output_shape, kernel, strides=None, pads=None, dilations=None,
                  count_include_pad: bool = False, norm: str = "l2") -> LayerBound:
    """Average pooling is linear and separable: per channel it is the Kronecker product of one 1-D averaging
    matrix per spatial axis, so its norm is the product of the 1-D norms (exact, from small SVDs; L-inf: the
    product of the max row sums). The lower bound is attained by the Kronecker product of the top singular
    vectors."""
    started = time.perf_counter()
    nd = len(input_shape) - 1
    pads_list = list(pads or [0] * (2 * nd))
    upper = lower = 1.0
    for i, (size, out, k, s, pb, d) in enumerate(
            _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations)):
        a = _average_matrix(size, out, k, s, pb, pads_list[i + nd], d, count_include_pad)
        value = float(np.abs(a).sum(axis=1).max()) if norm == "linf" else float(np.linalg.norm(a, 2))
        upper *= round_up(value, 1e-12 * (size + out))
        lower *= value
    return LayerBound(upper=round_up(upper), lower=lower * (1 - 1e-12), method="kronecker-svd", exact=True,
                      norm=norm, ms=(time.perf_counter() - started) * 1e3)


def global_avgpool_bound(input_shape, norm: str = "l2") -> LayerBound:
    """Mean over all spatial positions of each channel: ``1/sqrt(HW...)`` in L2 (row vectors of 1/n), 1 in L-inf."""
    n = int(np.prod(input_shape[1:])) if len(input_shape) > 1 else 1
    return exact_constant(1.0 if norm == "linf" else 1.0 / math.sqrt(max(n, 1)), method="constant", norm=norm)


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): averages are linear, a window max is bounded by one of its
    entries below and by the largest upper bound above."""
    from certify.local.rules import Linear, WindowMax

    AveragePool.relaxation = Linear()
    GlobalAveragePool.relaxation = Linear()
    MaxPool.relaxation = WindowMax()


_relaxations()
