"""Operators that move or select data without arithmetic.

Several of these read integer lists (axes, pads, splits, starts...) that older opsets give as attributes and newer
ones as inputs; such an input may be a constant folded at conversion or a tensor computed at run time, so each
operator takes the input when the node has one and falls back to the attribute.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from certify.errors import ModelRejected
from certify.ops import examples
from certify.ops.base import OnnxOp, check_allocation, dense_of_sparse, ints, tensor_of_array
from certify.ops.registry import register


def _axis(axis: int, rank: int) -> int:
    """An ONNX axis in ``[-rank, rank)`` as a non-negative index."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _int_list(tensor: torch.Tensor | None, attribute) -> list[int] | None:
    """An integer-list parameter: the node's input when present, else its attribute (None when neither)."""
    if tensor is not None:
        return ints(tensor)
    return None if attribute is None else [int(v) for v in attribute]


class Reshaping(OnnxOp):
    """An operator that only rearranges its input's entries (each entry kept once): an isometry."""

    float_rounding = "exact"

    def lipschitz(self, ctx):
        """A reshape: norm 1."""
        from certify.lipschitz import rules

        return rules.Linear("isometry")


class Indexing(OnnxOp):
    """An operator whose output entries are copies of input entries (maybe repeated, maybe dropped)."""

    float_rounding = "exact"

    def lipschitz(self, ctx):
        """Copies entries: sqrt(max copies of one entry)."""
        from certify.lipschitz import rules

        if ctx.varying_inputs != [0]:
            return rules.unbounded(ctx, "indices, pads or repeats depend on the input")
        return rules.selection(ctx, self)


@register("Flatten", versions=(1, None))
class Flatten(Reshaping):
    """To 2-D: dimensions before ``axis`` become the rows, the rest the columns."""

    @classmethod
    def example(cls, op_type, rng):
        """Every axis, negative included."""
        per_sample = examples.shape(rng)
        axis = int(rng.integers(-len(per_sample) - 1, len(per_sample) + 2))
        return examples.unary(op_type, rng, per_sample=per_sample, axis=axis)

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", 1))

    def forward(self, x):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Reshape", versions=(5, None))
class Reshape(Reshaping):
    """A target shape with -1 (inferred) and 0 (copy the input's dimension, unless ``allowzero``)."""

    @classmethod
    def example(cls, op_type, rng):
        """Targets with -1, 0 (copy) and the batch axis merged in."""
        g = examples.Graph(rng, examples.shape(rng))
        size = math.prod(g.x_shape)
        target = examples.pick(rng, [[-1], [0, -1], [1, size], [size, 1], [*g.x_shape[:-1], 0]])
        return examples.Example(g.model(g.node(op_type, ["x", g.ints(target)])), f"target {target}")

    def __init__(self, node):
        super().__init__(node)
        self.allowzero = int(node.attr("allowzero", 0))

    def forward(self, x, shape):
        target = ints(shape)
        if not self.allowzero:
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)


@register("Transpose", versions=(1, None))
class Transpose(Indexing):
    """Permute dimensions; without ``perm`` reverse them."""

    @classmethod
    def example(cls, op_type, rng):
        """Any permutation (the batch axis included), or the default reversal."""
        g = examples.Graph(rng, examples.shape(rng))
        attrs = {"perm": [int(a) for a in rng.permutation(len(g.x_shape))]} if rng.random() < 0.8 else {}
        return examples.Example(g.model(g.node(op_type, ["x"], **attrs)), "perm" if attrs else "reverse")

    def __init__(self, node):
        super().__init__(node)
        perm = node.attr("perm")
        self.perm = None if perm is None else [int(p) for p in perm]

    def forward(self, x):
        perm = self.perm if self.perm is not None else list(reversed(range(x.dim())))
        return x.permute(perm)


@register("Squeeze", versions=(1, None))
class Squeeze(Reshaping):
    """Drop size-1 dimensions: the listed ``axes`` (attribute before opset 13, input after), or all of them."""

    @classmethod
    def example(cls, op_type, rng):
        """Some or all size-1 axes (negative indices), or none given."""
        g = examples.Graph(rng, examples.shape(rng, size=2))
        ones = [i - len(g.x_shape) * int(rng.integers(0, 2)) for i, d in enumerate(g.x_shape) if d == 1]
        axes = [a for a in ones if rng.random() < 0.6]
        inputs = ["x", g.ints(axes)] if axes else ["x"]
        return examples.Example(g.model(g.node(op_type, inputs)), f"{len(axes)} axes")

    def __init__(self, node):
        super().__init__(node)
        self.axes = node.attr("axes")

    def forward(self, x, axes=None):
        listed = _int_list(axes, self.axes)
        if listed is None:
            return x.squeeze()
        dims = sorted({_axis(a, x.dim()) for a in listed})
        for d in dims:
            if x.shape[d] != 1:
                raise ValueError(f"cannot squeeze axis {d} of size {x.shape[d]}")
        return x.squeeze(tuple(dims)) if dims else x


@register("Unsqueeze", versions=(1, None))
class Unsqueeze(Reshaping):
    """Insert size-1 dimensions at ``axes`` of the output (attribute before opset 13, input after)."""

    @classmethod
    def example(cls, op_type, rng):
        """New axes anywhere, negative included."""
        g = examples.Graph(rng, examples.shape(rng))
        count = int(rng.integers(1, 3))
        rank = len(g.x_shape) + count
        axes = [int(a) for a in rng.choice(np.arange(-rank, rank), size=count, replace=False)]
        if len({a % rank for a in axes}) < count:
            axes = [0]
        return examples.Example(g.model(g.node(op_type, ["x", g.ints(axes)])), f"{len(axes)} axes")

    def __init__(self, node):
        super().__init__(node)
        self.axes = node.attr("axes")

    def forward(self, x, axes=None):
        listed = _int_list(axes, self.axes)
        if listed is None:
            raise ValueError("Unsqueeze needs axes")
        rank = x.dim() + len(listed)
        dims = sorted(_axis(a, rank) for a in listed)
        if len(set(dims)) != len(dims):
            raise ValueError(f"Unsqueeze axes {listed} repeat an axis")
        for d in dims:
            x = x.unsqueeze(d)
        return x


@register("Concat", versions=(4, None))
class Concat(OnnxOp):
    float_rounding = "exact"

    @classmethod
    def example(cls, op_type, rng):
        """One to three parts along any axis, each x, a constant or a function of x."""
        g = examples.Graph(rng, examples.shape(rng))
        axis = int(rng.integers(-len(g.x_shape), len(g.x_shape)))
        parts = ["x"]
        for _ in range(int(rng.integers(0, 3))):
            target = list(g.x_shape)
            target[axis] = int(rng.integers(1, 4))
            parts.append(g.operand(tuple(target))[0])
        parts = [parts[i] for i in rng.permutation(len(parts))]
        return examples.Example(g.model(g.node(op_type, parts, axis=axis)), f"{len(parts)} parts")

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis"))

    def forward(self, *xs):
        xs = [x for x in xs if x is not None]
        return torch.cat(xs, dim=_axis(self.axis, xs[0].dim()))

    def lipschitz(self, ctx):
        """Root-sum-square of the varying parts."""
        from certify.lipschitz import rules

        return rules.Combine("concat") if len(ctx.varying_inputs) > 1 else rules.selection(ctx, self)


@register("Split", versions=(2, None))
class Split(Indexing):
    """Split along ``axis`` by the ``split`` sizes (attribute before opset 13, input after), else into as many
    parts as the node has outputs (``num_outputs`` from opset 18), the last part smaller when uneven."""

    @classmethod
    def example(cls, op_type, rng):
        """Any axis, explicit sizes or equal parts; one part (or all parts concatenated in reverse) returned."""
        g = examples.Graph(rng, examples.shape(rng))
        axis = int(rng.integers(-len(g.x_shape), len(g.x_shape)))
        size = g.x_shape[axis]
        cuts = sorted(int(c) for c in rng.integers(0, size + 1, size=int(rng.integers(0, 3))))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, size])]
        parts = g.node(op_type, ["x", g.ints(sizes)], outputs=len(sizes), axis=axis)
        parts = parts if isinstance(parts, list) else [parts]
        out = parts[int(rng.integers(len(parts)))] if rng.random() < 0.5 else g.node("Concat", parts[::-1], axis=axis)
        return examples.Example(g.model(out), f"{len(sizes)} parts")

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", 0))
        self.split = node.attr("split")
        self.parts = int(node.attr("num_outputs", len(node.outputs)))

    def forward(self, x, split=None):
        axis = _axis(self.axis, x.dim())
        sizes = _int_list(split, self.split)
        if sizes is None:
            size = x.shape[axis]
            chunk = -(-size // self.parts)
            sizes = [chunk] * (self.parts - 1) + [size - chunk * (self.parts - 1)]
            if sizes[-1] < 0:
                raise ValueError(f"cannot split a dimension of {size} into {self.parts} parts")
        return tuple(torch.split(x, sizes, dim=axis))


def _slice_bounds(start: int, end: int, step: int, size: int) -> tuple[int, int]:
    """ONNX Slice's clamping of ``start`` and ``end`` for one axis of ``size``."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        return min(max(start, 0), size), min(max(end, 0), size)
    return min(max(start, 0), size - 1), min(max(end, -1), size - 1)


@register("Slice", versions=(1, None))
class Slice(Indexing):
    """Strided slices along ``axes``; starts/ends/axes are attributes before opset 10, inputs (with steps) after.

    Negative steps select in reverse (``index_select``, since torch views only take positive steps).
    """

    @classmethod
    def example(cls, op_type, rng):
        """Starts and ends anywhere (negative, beyond the ends), steps of either sign, some axes."""
        g = examples.Graph(rng, examples.shape(rng))
        rank = len(g.x_shape)
        axes = [int(a) for a in rng.permutation(rank)[:int(rng.integers(1, rank + 1))]]
        big = 2**62
        starts = [int(examples.pick(rng, [0, 1, -1, -big, big, 2])) for _ in axes]
        ends = [int(examples.pick(rng, [0, 1, -1, -big, big, 3])) for _ in axes]
        steps = [int(examples.pick(rng, [1, 1, 2, -1, -2])) for _ in axes]
        inputs = ["x", g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)]
        return examples.Example(g.model(g.node(op_type, inputs)), "negative steps" if min(steps) < 0 else "steps")

    def __init__(self, node):
        super().__init__(node)
        self.starts = node.attr("starts")
        self.ends = node.attr("ends")
        self.axes = node.attr("axes")

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        starts = _int_list(starts, self.starts)
        ends = _int_list(ends, self.ends)
        axes = _int_list(axes, self.axes)
        axes = list(range(len(starts))) if axes is None else [_axis(a, x.dim()) for a in axes]
        steps = _int_list(steps, None) or [1] * len(starts)
        index = [slice(None)] * x.dim()
        reverse = []
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step == 0:
                raise ValueError("Slice step cannot be 0")
            start, end = _slice_bounds(start, end, step, x.shape[axis])
            if step > 0:
                index[axis] = slice(start, end, step)
            else:
                reverse.append((axis, start, end, step))
        x = x[tuple(index)]
        for axis, start, end, step in reverse:
            empty = (end - start) * step <= 0  # torch.arange refuses a step pointing away from the end
            positions = torch.arange(0 if empty else start, 0 if empty else end, step, device=x.device)
            x = x.index_select(axis, positions)
        return x


@register("Gather", versions=(1, None))
class Gather(Indexing):
    """Take entries of ``axis`` at ``indices`` (negative counts from the end); the axis becomes indices' shape."""

    @classmethod
    def example(cls, op_type, rng):
        """Any axis; indices negative, repeated, scalar or 2-D."""
        g = examples.Graph(rng, examples.shape(rng))
        axis = int(rng.integers(-len(g.x_shape), len(g.x_shape)))
        size = g.x_shape[axis]
        shape = examples.pick(rng, [(), (3,), (2, 2)])
        indices = rng.integers(-size, size, size=shape)
        return examples.Example(g.model(g.node(op_type, ["x", g.ints(indices)], axis=axis)), f"indices {shape}")

    def __init__(self, node):
        super().__init__(node)
        self.axis = int(node.attr("axis", 0))

    def forward(self, x, indices):
        axis = _axis(self.axis, x.dim())
        size = x.shape[axis]
        flat = indices.reshape(-1).long()
        flat = torch.where(flat < 0, flat + size, flat)
        out = x.index_select(axis, flat)
        return out.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))


def _pad_positions(size: int, before: int, after: int, mode: str, device) -> torch.Tensor:
    """Source index, along one axis, of every output position of an edge/reflect/wrap pad."""
    positions = torch.arange(-before, size + after, device=device)
    if mode == "edge" or (mode == "reflect" and size == 1):
        return positions.clamp(0, size - 1)
    if mode == "wrap":
        return positions.remainder(size)
    period = 2 * (size - 1)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)


@register("Pad", versions=(2, None))
class Pad(Indexing):
    """Pad (or, with negative pads, crop) each axis: constant, reflect, edge or wrap.

    ``pads`` is ``[begin..., end...]``: an attribute with ``value`` before opset 11, inputs after, restricted to
    ``axes`` from opset 18. Negative pads crop first, then positive pads extend, as onnx's reference does.
    """

    MODES = ("constant", "reflect", "edge", "wrap")

    @classmethod
    def example(cls, op_type, rng):
        """Every mode; pads negative (crops), zero and larger than the axis; a constant value; some axes."""
        g = examples.Graph(rng, examples.shape(rng))
        mode = examples.pick(rng, ["constant", "reflect", "edge", "wrap"])
        rank = len(g.x_shape)
        pads = [int(p) for p in rng.integers(-1 if mode == "constant" else 0, 4, size=2 * rank)]
        if mode == "reflect":
            pads = [min(p, g.x_shape[i % rank] - 1) for i, p in enumerate(pads)]
        inputs = ["x", g.ints(pads)] + ([g.const(examples.real(rng))] if mode == "constant" else [])
        return examples.Example(g.model(g.node(op_type, inputs, mode=mode)), mode)

    def __init__(self, node):
        super().__init__(node)
        self.mode = node.attr("mode", "constant")
        if self.mode not in self.MODES:
            raise ValueError(f"Pad mode {self.mode!r} is not one of {self.MODES}")
        self.pads = node.attr("pads")
        self.value = float(node.attr("value", 0.0))

    def forward(self, x, pads=None, constant_value=None, axes=None):
        listed = _int_list(pads, self.pads)
        rank = x.dim()
        axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in ints(axes)]
        if len(listed) != 2 * len(axes):
            raise ValueError(f"Pad needs {2 * len(axes)} pads for {len(axes)} axes, got {len(listed)}")
        befores, afters = [0] * rank, [0] * rank
        for i, axis in enumerate(axes):
            befores[axis], afters[axis] = listed[i], listed[i + len(axes)]
        crop = tuple(slice(max(-b, 0), x.shape[d] - max(-a, 0)) for d, (b, a) in enumerate(zip(befores, afters)))
        x = x[crop]
        befores = [max(b, 0) for b in befores]
        afters = [max(a, 0) for a in afters]
        out_shape = [s + b + a for s, b, a in zip(x.shape, befores, afters)]
        check_allocation(out_shape, x.dtype, "Pad output")
        if self.mode == "constant":
            value = self.value if constant_value is None else constant_value.reshape(-1)[0].item()
            if not x.is_floating_point():
                value = int(value)
            widths = [w for d in reversed(range(rank)) for w in (befores[d], afters[d])]
            return F.pad(x, widths, value=value) if any(widths) else x
        for d in range(rank):
            if befores[d] or afters[d]:
                if x.shape[d] == 0:
                    raise ValueError(f"cannot {self.mode}-pad an empty axis {d}")
                x = x.index_select(d, _pad_positions(x.shape[d], befores[d], afters[d], self.mode, x.device))
        return x


@register("Tile", versions=(6, None))
class Tile(Indexing):
    @classmethod
    def example(cls, op_type, rng):
        """Repeats of 1 to 3 on every axis."""
        g = examples.Graph(rng, examples.shape(rng))
        repeats = [int(r) for r in rng.integers(1, 4, size=len(g.x_shape))]
        return examples.Example(g.model(g.node(op_type, ["x", g.ints(repeats)])), "tile")

    def forward(self, x, repeats):
        counts = ints(repeats)
        if len(counts) != x.dim():
            raise ValueError(f"Tile needs {x.dim()} repeats, got {len(counts)}")
        check_allocation([s * r for s, r in zip(x.shape, counts)], x.dtype, "Tile output")
        return x.repeat(counts)


@register("Expand", versions=(8, None))
class Expand(Indexing):
    """Broadcast ``x`` with ``shape`` in both directions (numpy rules)."""

    @classmethod
    def example(cls, op_type, rng):
        """Size-1 axes expanded and leading axes added."""
        per_sample = examples.shape(rng, size=2)
        g = examples.Graph(rng, per_sample)
        target = [d if d > 1 or rng.random() < 0.5 else int(rng.integers(2, 4)) for d in g.x_shape]
        target = [int(rng.integers(1, 3)) for _ in range(int(rng.integers(0, 2)))] + target
        out = g.node(op_type, ["x", g.ints(target)])
        return examples.Example(g.model(out), f"rank +{len(target) - len(g.x_shape)}")

    def forward(self, x, shape):
        try:
            target = torch.broadcast_shapes(x.shape, tuple(ints(shape)))
        except RuntimeError as e:
            raise ValueError(f"cannot expand {list(x.shape)} to {ints(shape)}: {e}") from None
        check_allocation(target, x.dtype, "Expand output")
        return x.expand(target)


@register("Shape", versions=(1, None))
class Shape(OnnxOp):
    """The input's shape as int64, optionally the slice ``[start:end]`` (opset 15)."""

    float_rounding = "exact"
    shape_only = True

    @classmethod
    def example(cls, op_type, rng):
        """Start and end anywhere (negative, out of range clamp)."""
        per_sample = examples.shape(rng)
        bounds = {k: int(rng.integers(-len(per_sample) - 2, len(per_sample) + 3)) for k in ("start", "end")
                  if rng.random() < 0.5}
        return examples.unary(op_type, rng, per_sample=per_sample, **bounds)

    def __init__(self, node):
        super().__init__(node)
        self.start = int(node.attr("start", 0))
        end = node.attr("end")
        self.end = None if end is None else int(end)

    def forward(self, x):
        return torch.tensor(x.shape[self.start : self.end], dtype=torch.int64)

    def lipschitz(self, ctx):
        """Independent of the input's values."""
        from certify.lipschitz import rules

        return rules.zero(ctx)


@register("Size", versions=(1, None))
class Size(OnnxOp):
    float_rounding = "exact"
    shape_only = True

    @classmethod
    def example(cls, op_type, rng):
        return examples.unary(op_type, rng)

    def forward(self, x):
        return torch.tensor(x.numel(), dtype=torch.int64)

    def lipschitz(self, ctx):
        """Independent of the input's values."""
        from certify.lipschitz import rules

        return rules.zero(ctx)


@register("Constant", versions=(1, None))
class Constant(OnnxOp):
    """A tensor from whichever ``value*`` attribute the node carries."""

    @classmethod
    def example(cls, op_type, rng):
        """x plus a constant node (float tensor, scalar or list), broadcast."""
        g = examples.Graph(rng, examples.shape(rng))
        value = examples.values(rng, examples.broadcastable(rng, g.x_shape))
        from onnx import numpy_helper

        attr = examples.pick(rng, [{"value": numpy_helper.from_array(value)}, {"value_float": examples.real(rng)},
                                   {"value_floats": [examples.real(rng)]}])
        c = g.node(op_type, [], **attr)
        return examples.Example(g.model(g.node("Add", ["x", c])), next(iter(attr)))

    def __init__(self, node):
        super().__init__(node)
        if "value" in node.attrs:
            value = tensor_of_array(node.attrs["value"])
        elif "sparse_value" in node.attrs:
            value = tensor_of_array(dense_of_sparse(node.attrs["sparse_value"]))
        elif "value_float" in node.attrs or "value_floats" in node.attrs:
            value = torch.tensor(node.attr("value_float", node.attr("value_floats")), dtype=torch.float32)
        elif "value_int" in node.attrs or "value_ints" in node.attrs:
            value = torch.tensor(node.attr("value_int", node.attr("value_ints")), dtype=torch.int64)
        elif "value_string" in node.attrs or "value_strings" in node.attrs:
            raise ModelRejected("unsupported_dtype", f"Constant {node.name} holds strings")
        else:
            raise ValueError(f"Constant {node.name} has no value attribute")
        self.register_buffer("value", value)

    def forward(self):
        return self.value


@register("ConstantOfShape", versions=(9, None))
class ConstantOfShape(OnnxOp):
    """A tensor of the given shape filled with ``value`` (a one-element tensor; default float32 zero)."""

    @classmethod
    def example(cls, op_type, rng):
        """x times a tensor of x's shape filled with any value."""
        g = examples.Graph(rng, examples.shape(rng))
        from onnx import numpy_helper

        value = numpy_helper.from_array(np.array([examples.real(rng)], dtype=np.float32))
        filled = g.node(op_type, [g.node("Shape", ["x"])], value=value)
        return examples.Example(g.model(g.node("Mul", ["x", filled])), "scale")

    def __init__(self, node):
        super().__init__(node)
        value = node.attr("value")
        self.register_buffer(
            "fill",
            torch.zeros((), dtype=torch.float32) if value is None else tensor_of_array(value).reshape(-1)[0].clone(),
        )

    def forward(self, shape):
        dims = ints(shape)
        check_allocation(dims, self.fill.dtype, "ConstantOfShape output")
        return self.fill.expand(dims).clone()

    def lipschitz(self, ctx):
        """An input-dependent shape is not continuous."""
        from certify.lipschitz import rules

        return rules.unbounded(ctx, "the shape depends on the input")


@register("Range", versions=(11, None))
class Range(OnnxOp):
    """``start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``, in the inputs' dtype."""

    @classmethod
    def example(cls, op_type, rng):
        """x flattened plus a range whose length is x's size (its bounds depend on x's shape only)."""
        g = examples.Graph(rng, examples.shape(rng))
        size = g.node("Cast", [g.node("Size", ["x"])], to=1)
        delta = float(examples.pick(rng, [1.0, 0.5, -1.0]))
        limit = size if delta == 1.0 else g.node("Mul", [size, g.const(delta)])
        ramp = g.node(op_type, [g.const(0.0), limit, g.const(delta)])
        return examples.Example(g.model(g.node("Add", [g.node("Reshape", ["x", g.ints([-1])]), ramp])), "ramp")

    def forward(self, start, limit, delta):
        first, stop, step = start.item(), limit.item(), delta.item()
        if step == 0:
            raise ValueError("Range delta cannot be 0")
        count = max(math.ceil((stop - first) / step), 0)
        check_allocation([count], start.dtype, "Range output")
        steps = torch.arange(count, dtype=torch.float64 if start.is_floating_point() else torch.int64)
        return (first + steps * step).to(start.dtype)

    def lipschitz(self, ctx):
        """Input-dependent limits are not continuous."""
        from certify.lipschitz import rules

        return rules.unbounded(ctx, "the limits depend on the input")


@register("Dropout", versions=(7, None))
class Dropout(OnnxOp):
    """Identity at inference. ``training_mode`` (opset 12+) set at run time drops with probability ``ratio``.

    The optional mask output is all-true (bool; the input's dtype before opset 10).
    """

    float_rounding = "exact"

    @classmethod
    def example(cls, op_type, rng):
        """Any ratio, training_mode absent or false (inference), the mask output unused."""
        g = examples.Graph(rng, examples.shape(rng))
        inputs = ["x", g.const(float(rng.uniform(0, 0.9)))]
        if rng.random() < 0.5:
            inputs.append(g.const(False, bool))
        out = g.node(op_type, inputs, outputs=2)
        return examples.Example(g.model(out[0]), "inference")

    def __init__(self, node):
        super().__init__(node)
        self.ratio = float(node.attr("ratio", 0.5))
        self.wants_mask = len(node.outputs) > 1 and bool(node.outputs[1])
        self.bool_mask = node.opset >= 10

    def forward(self, x, ratio=None, training_mode=None):
        p = self.ratio if ratio is None else float(ratio.item())
        if training_mode is not None and bool(training_mode.item()) and p > 0:
            keep = torch.rand_like(x, dtype=torch.float32) >= p
            out = x * keep.to(x.dtype) / (1.0 - p) if p < 1 else torch.zeros_like(x)
        else:
            out = x
            keep = torch.ones_like(x, dtype=torch.bool) if self.wants_mask else None
        if not self.wants_mask:
            return out
        return out, keep if self.bool_mask else keep.to(x.dtype)

    def lipschitz(self, ctx):
        """Identity at inference: norm 1."""
        from certify.lipschitz import rules

        return rules.Linear("isometry")


@register("Identity", versions=(1, None))
class Identity(Reshaping):
    @classmethod
    def example(cls, op_type, rng):
        return examples.unary(op_type, rng)

    def forward(self, x):
        return x


def _relaxations() -> None:
    """Local bound propagation (``certify.local``): moving, copying and padding entries is affine."""
    from certify.local.rules import Linear

    for op in (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Slice, Gather, Pad, Tile, Expand, Dropout,
               Identity):
        op.relaxation = Linear(fixed=tuple(range(1, 8)) if op is not Concat else ())


_relaxations()
