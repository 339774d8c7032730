"""Resize and Upsample as separable resampling: each resized axis is a fixed linear map of that axis.

For every resized axis the output position ``i`` reads source coordinate ``x_i`` (the coordinate transformation
mode), and takes either the nearest input element (``nearest``) or a weighted sum of neighbours (``linear``,
``cubic``, optionally antialiased, optionally excluding out-of-range neighbours). Indices outside the input are
clamped to its edge. With ``tf_crop_and_resize``, positions whose source lies outside the input take
``extrapolation_value``. The per-axis plan (``Resampler.plan``) is what a Lipschitz bound reads: a resize is the
composition of its axis matrices.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from certify.errors import ModelRejected
from certify.ops import examples
from certify.ops.base import OnnxOp, check_allocation
from certify.ops.registry import register, schema_version

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "tf_crop_and_resize",
)
#: ``legacy`` is Upsample's and Resize-10's rule: floor when enlarging an axis, ceil when shrinking it.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "legacy")
ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


@dataclass(frozen=True)
class ResampleSettings:
    """The attributes that decide how a Resize samples (hashable, so plans can be cached)."""

    mode: str = "nearest"
    coordinate_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    antialias: bool = False
    axes: tuple[int, ...] | None = None
    keep_aspect_ratio_policy: str = "stretch"


@dataclass(frozen=True)
class AxisResampling:
    """How one axis is resampled.

    ``index`` (nearest mode): output ``i`` copies input ``index[i]``. ``matrix`` (linear, cubic): output ``i`` is
    ``matrix[i] @ input``. ``outside`` (tf_crop_and_resize only): outputs set to ``extrapolation_value`` instead.
    """

    axis: int
    input_size: int
    output_size: int
    scale: float
    index: np.ndarray | None
    matrix: np.ndarray | None
    outside: np.ndarray | None

    def dense_matrix(self) -> np.ndarray:
        """The (output_size, input_size) matrix of this axis (also for nearest mode; outside rows are zero)."""
        if self.matrix is not None:
            m = self.matrix.copy()
        else:
            m = np.zeros((self.output_size, self.input_size))
            m[np.arange(self.output_size), self.index] = 1.0
        if self.outside is not None:
            m[self.outside] = 0.0
        return m


def _reject(message: str):
    return ModelRejected("invalid_attribute", message)


def source_coordinates(mode: str, output_size: int, input_size: int, scale: float, roi=(0.0, 1.0)):
    """Source coordinate of every output position, and which fall outside the input (tf_crop_and_resize)."""
    y = np.arange(output_size, dtype=np.float64)
    length = scale * input_size  # the unrounded output length the ONNX formulas use
    outside = None
    if mode == "align_corners":
        x = np.zeros(output_size) if length == 1 else y * (input_size - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif mode == "tf_crop_and_resize":
        start, end = float(roi[0]), float(roi[1])
        if length == 1:
            x = np.full(output_size, (end - start) * (input_size - 1) / 2)
        else:
            x = y * (end - start) * (input_size - 1) / (length - 1)
        x = x + start * (input_size - 1)
        outside = (x < 0) | (x > input_size - 1)
    elif mode == "pytorch_half_pixel":
        # A single output samples input position 0 (the spec's and onnxruntime's rule).
        x = np.zeros(output_size) if output_size == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = input_size / 2 * (1 - output_size / length)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise _reject(f"coordinate_transformation_mode {mode!r} is not one of {COORDINATE_MODES}")
    return x, outside


def nearest_indices(x: np.ndarray, rounding: str, scale: float, input_size: int) -> np.ndarray:
    if rounding == "round_prefer_floor":
        index = np.ceil(x - 0.5)
    elif rounding == "round_prefer_ceil":
        index = np.floor(x + 0.5)
    elif rounding == "floor" or (rounding == "legacy" and scale >= 1):
        index = np.floor(x)
    elif rounding in ("ceil", "legacy"):
        index = np.ceil(x)
    else:
        raise _reject(f"nearest_mode {rounding!r} is not one of {NEAREST_MODES}")
    return np.clip(index, 0, input_size - 1).astype(np.int64)


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient ``a``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _triangle_kernel(t: np.ndarray) -> np.ndarray:
    return np.clip(1 - np.abs(t), 0.0, 1.0)


def interpolation_matrix(x: np.ndarray, settings: ResampleSettings, scale: float, input_size: int) -> np.ndarray:
    """(len(x), input_size) weights of linear or cubic interpolation at source coordinates ``x``.

    With antialias and ``scale < 1`` the kernel is stretched by 1/scale and each row normalised to sum 1.
    """
    stretch = min(scale, 1.0) if settings.antialias else 1.0
    radius = 1 if settings.mode == "linear" else 2
    half = math.ceil(radius / stretch)
    base = np.floor(x)
    taps = base[:, None] + np.arange(1 - half, half + 1)[None, :]
    distance = (taps - x[:, None]) * stretch
    if settings.mode == "linear":
        weights = _triangle_kernel(distance)
    else:
        weights = _cubic_kernel(distance, settings.cubic_coeff_a)
    if settings.antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    if settings.exclude_outside:
        weights = np.where((taps < 0) | (taps >= input_size), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    matrix = np.zeros((len(x), input_size))
    rows = np.repeat(np.arange(len(x)), taps.shape[1])
    np.add.at(matrix, (rows, np.clip(taps, 0, input_size - 1).astype(np.int64).reshape(-1)), weights.reshape(-1))
    return matrix


def output_geometry(settings: ResampleSettings, shape, scales, sizes) -> tuple[list[int], list[float], list[int]]:
    """(resized axes, their scales, their output sizes) from ``scales`` or ``sizes`` (ONNX rules)."""
    rank = len(shape)
    axes = list(range(rank)) if settings.axes is None else [a + rank if a < 0 else a for a in settings.axes]
    if any(not 0 <= a < rank for a in axes):
        raise ValueError(f"Resize axes {settings.axes} out of range for rank {rank}")
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ValueError(f"Resize sizes has {len(sizes)} values for {len(axes)} axes")
        if any(shape[a] == 0 for a in axes):
            raise ValueError("Resize of an empty axis by sizes")
        axis_scales = [sizes[i] / shape[a] for i, a in enumerate(axes)]
        policy = settings.keep_aspect_ratio_policy
        if policy == "stretch":
            return axes, axis_scales, [int(s) for s in sizes]
        common = min(axis_scales) if policy == "not_larger" else max(axis_scales)
        return axes, [common] * len(axes), [int(common * shape[a] + 0.5) for a in axes]
    if scales is None:
        raise ValueError("Resize needs scales or sizes")
    if len(scales) != len(axes):
        raise ValueError(f"Resize scales has {len(scales)} values for {len(axes)} axes")
    if any(not s > 0 for s in scales):
        raise ValueError(f"Resize scales must be positive, got {list(scales)}")
    return axes, list(scales), [int(math.floor(s * shape[a])) for s, a in zip(scales, axes)]


@functools.lru_cache(maxsize=128)
def resampling_plan(settings: ResampleSettings, shape: tuple, scales, sizes, roi) -> tuple[list[AxisResampling], tuple]:
    """Per-axis resampling of an input of ``shape``, and the output shape. Identity axes are left out."""
    rank = len(shape)
    axes, axis_scales, out_sizes = output_geometry(settings, shape, scales, sizes)
    out_shape = list(shape)
    plan = []
    for i, (axis, scale, out) in enumerate(zip(axes, axis_scales, out_sizes)):
        out_shape[axis] = out
        axis_roi = (0.0, 1.0)
        if roi is not None and settings.coordinate_mode == "tf_crop_and_resize":
            n = len(roi) // 2
            j = i if n == len(axes) else axis
            if n not in (len(axes), rank):
                raise ValueError(f"Resize roi has {len(roi)} values for {len(axes)} axes")
            axis_roi = (roi[j], roi[n + j])
        if math.isclose(scale, 1.0) and out == shape[axis] and np.allclose(axis_roi, (0.0, 1.0)):
            continue
        x, outside = source_coordinates(settings.coordinate_mode, out, shape[axis], scale, axis_roi)
        if settings.mode == "nearest":
            index = nearest_indices(x, settings.nearest_mode, scale, shape[axis])
            plan.append(AxisResampling(axis, shape[axis], out, scale, index, None, outside))
        else:
            matrix = interpolation_matrix(x, settings, scale, shape[axis])
            plan.append(AxisResampling(axis, shape[axis], out, scale, None, matrix, outside))
    return plan, tuple(out_shape)


def _values(t) -> tuple | None:
    """An optional 1-D input as a tuple of Python numbers; None when absent or empty."""
    if t is None:
        return None
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if arr.size == 0:
        return None
    return tuple(arr.reshape(-1).tolist())


def _known(t, known: tuple | None) -> tuple | None:
    """The value known at conversion when there is one: reading a runtime tensor back (``.numpy()``) fails under
    torch.func transforms (vmap, jacrev), which the bounds and the attacks run the graph through."""
    return known if known is not None else _values(t)


class Resampler(OnnxOp):
    """Shared by Resize and Upsample. Fields: ``settings`` (a ``ResampleSettings``), and ``scales``, ``sizes``,
    ``roi`` when they are constants known at conversion (None otherwise)."""

    settings: ResampleSettings

    def plan(self, input_shape, scales=None, sizes=None, roi=None) -> tuple[list[AxisResampling], tuple]:
        """Per-axis resampling for this input shape (defaults: the constant scales/sizes/roi)."""
        scales = self.scales if scales is None else scales
        sizes = self.sizes if sizes is None else sizes
        roi = self.roi if roi is None else roi
        return resampling_plan(self.settings, tuple(int(d) for d in input_shape), scales, sizes, roi)

    def resample(self, x: torch.Tensor, scales, sizes, roi) -> torch.Tensor:
        sizes = None if sizes is None else tuple(int(s) for s in sizes)
        plan, out_shape = self.plan(x.shape, scales, sizes, roi)
        check_allocation(out_shape, x.dtype, f"{self.op_type} {self.onnx_name} output")
        floating = x.dtype.is_floating_point
        y = x if floating or self.settings.mode == "nearest" else x.to(torch.float64)
        for step in plan:
            if step.index is not None:
                y = y.index_select(step.axis, torch.from_numpy(step.index))
            else:
                weights = torch.from_numpy(step.matrix).to(y.dtype)
                y = torch.tensordot(y, weights, dims=([step.axis], [1])).movedim(-1, step.axis)
            if step.outside is not None and step.outside.any():
                rows = torch.from_numpy(np.flatnonzero(step.outside))
                y = y.index_fill(step.axis, rows, self.settings.extrapolation_value)
        if y.dtype != x.dtype:
            info = torch.iinfo(x.dtype)
            y = y.round().clamp(info.min, info.max).to(x.dtype)
        return y

    def lipschitz(self, ctx):
        """Linear, one matrix per axis: the product of their norms."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "scales or sizes depend on the input")
        plan, _ = self.plan((1, *ctx.in_shape))
        return rules.separable(ctx, [step.dense_matrix() for step in plan])


def _check_choice(node, value, choices, what):
    if value not in choices:
        raise _reject(f"{node.op_type} {node.name}: {what} {value!r} is not one of {choices}")
    return value


@register("Resize", versions=(10, None))
class Resize(Resampler):
    """ONNX Resize (opset 10: inputs X, scales; from 11: X, roi, scales, sizes). Modes nearest, linear, cubic."""

    @classmethod
    def example(cls, op_type, rng):
        """Every mode and coordinate mode, scales (enlarging, shrinking, 1) or sizes, antialias, exclude_outside,
        any cubic coefficient, extrapolation values; the batch and channel axes kept."""
        per_sample = examples.spatial_input(rng, int(rng.integers(1, 3)))
        g = examples.Graph(rng, per_sample, opset=19)
        mode = examples.pick(rng, MODES)
        attrs = {"mode": mode, "coordinate_transformation_mode": examples.pick(rng, COORDINATE_MODES),
                 "nearest_mode": examples.pick(rng, NEAREST_MODES[:-1]), "antialias": int(rng.random() < 0.3),
                 "exclude_outside": int(rng.random() < 0.3), "cubic_coeff_a": examples.real(rng),
                 "extrapolation_value": examples.real(rng)}
        spatial = [float(examples.pick(rng, [0.5, 1.0, 1.5, 2.0, 3.0])) for _ in per_sample[1:]]
        roi = g.const([0.0] * len(g.x_shape) + [1.0] * len(g.x_shape)) if rng.random() < 0.5 else ""
        if rng.random() < 0.5:
            inputs = ["x", roi, g.const([1.0, 1.0, *spatial])]
        else:
            sizes = [max(1, int(d * f)) for d, f in zip(per_sample[1:], spatial)]
            inputs = ["x", roi, "", g.ints([1, per_sample[0], *sizes])]
        return examples.Example(g.model(g.node(op_type, inputs, **attrs)),
                                f"{mode}, {attrs['coordinate_transformation_mode']}")

    def __init__(self, node):
        super().__init__(node)
        self.legacy = (schema_version("Resize", node.opset) or 11) < 11
        mode = _check_choice(node, node.attr("mode", "nearest"), MODES, "mode")
        if self.legacy:
            if mode == "cubic":
                raise _reject(f"Resize {node.name}: cubic mode needs opset 11 or newer")
            self.settings = ResampleSettings(mode=mode, coordinate_mode="asymmetric", nearest_mode="legacy")
            self.scales, self.sizes, self.roi = _values(node.const(1)), None, None
            return
        axes = node.attr("axes")
        self.settings = ResampleSettings(
            mode=mode,
            coordinate_mode=_check_choice(
                node, node.attr("coordinate_transformation_mode", "half_pixel"), COORDINATE_MODES, "coordinate mode"
            ),
            nearest_mode=_check_choice(
                node, node.attr("nearest_mode", "round_prefer_floor"), NEAREST_MODES[:-1], "nearest_mode"
            ),
            cubic_coeff_a=float(node.attr("cubic_coeff_a", -0.75)),
            exclude_outside=bool(node.attr("exclude_outside", 0)),
            extrapolation_value=float(node.attr("extrapolation_value", 0.0)),
            antialias=bool(node.attr("antialias", 0)) and mode != "nearest",
            axes=None if axes is None else tuple(int(a) for a in axes),
            keep_aspect_ratio_policy=_check_choice(
                node, node.attr("keep_aspect_ratio_policy", "stretch"), ASPECT_POLICIES, "keep_aspect_ratio_policy"
            ),
        )
        self.roi, self.scales, self.sizes = (_values(node.const(i)) for i in (1, 2, 3))

    def forward(self, x, *rest):
        if self.legacy:
            return self.resample(x, _known(rest[0], self.scales), None, None)
        roi, scales, sizes = (list(rest) + [None] * 3)[:3]
        return self.resample(x, _known(scales, self.scales), _known(sizes, self.sizes), _known(roi, self.roi))


@register("Upsample", versions=(7, 9))
class Upsample(Resampler):
    """Deprecated Upsample: scales per axis (attribute in opset 7, input from 9), nearest or linear, asymmetric
    coordinates."""

    @classmethod
    def example(cls, op_type, rng):
        """Nearest or linear, scales (input, opset 9) enlarging the spatial axes."""
        per_sample = examples.spatial_input(rng, int(rng.integers(1, 3)))
        g = examples.Graph(rng, per_sample, opset=9)
        mode = examples.pick(rng, ["nearest", "linear"])
        scales = g.const([1.0, 1.0, *(float(examples.pick(rng, [1.0, 2.0, 3.0])) for _ in per_sample[1:])])
        return examples.Example(g.model(g.node(op_type, ["x", scales], mode=mode)), mode)

    def __init__(self, node):
        super().__init__(node)
        mode = node.attr("mode", "nearest")
        mode = "linear" if mode in ("bilinear", "trilinear") else mode
        _check_choice(node, mode, MODES[:2], "mode")
        self.settings = ResampleSettings(mode=mode, coordinate_mode="asymmetric", nearest_mode="legacy")
        scales = node.attr("scales")
        self.scales = tuple(float(s) for s in scales) if scales else _values(node.const(1))
        self.sizes, self.roi = None, None

    def forward(self, x, scales=None):
        return self.resample(x, _known(scales, self.scales), None, None)
