"""Relaxations: how interval and linear bound propagation pass through one operator.

Every operator class that local certification supports carries a ``relaxation`` (assigned at the end of its ops
module, beside its forward and its global Lipschitz rule). A relaxation answers two questions about a node whose
varying inputs are known to lie in boxes:

- ``interval(op, args)``: a box containing the node's output (interval bound propagation, IBP);
- linear bounds ``g_l(x) <= op(x) <= g_u(x)`` over those boxes, with ``g_l``, ``g_u`` affine (CROWN, Zhang et al.
  2018). Affine operators are their own bounds (``Linear``); elementwise activations give slopes and intercepts per
  element (``ReluLike``, ``SShaped``); window maxima give a selection and a constant (``WindowMax``).

``args`` lists the node's inputs in ONNX order: an :class:`Interval` for an input that varies with the network
input, the (center-run) tensor for one that does not, ``None`` for an omitted optional input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from certify.errors import CodedError


class UnsupportedOperator(CodedError):
    """A node local certification cannot bound; ``node`` and ``op_type`` name it for the report."""

    def __init__(self, node: str, op_type: str, why: str = "no relaxation"):
        super().__init__("local_unsupported", f"node {node!r} ({op_type}): {why}")
        self.node = node
        self.op_type = op_type


@dataclass
class Interval:
    """Elementwise bounds ``lo <= value <= hi`` (same shapes)."""

    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def mid(self) -> torch.Tensor:
        return (self.lo + self.hi) / 2

    @property
    def rad(self) -> torch.Tensor:
        return (self.hi - self.lo) / 2


def first_output(out):
    """The first output of an operator that may return several (Dropout's mask, MaxPool's indices)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def varying_indices(args) -> list[int]:
    return [i for i, a in enumerate(args) if isinstance(a, Interval)]


class Relaxation:
    """Base: ``elementwise`` rules give slopes (``slopes``), the others affine maps (``affine``)."""

    elementwise = False

    def check(self, op, args) -> None:
        """Raise :class:`UnsupportedOperator` when this pattern of varying inputs has no relaxation."""

    def interval(self, op, args) -> Interval:
        raise NotImplementedError

    def needs_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Which elements of the (first) input need tight bounds for this relaxation; all by default."""
        return torch.ones_like(lo, dtype=torch.bool)


class Linear(Relaxation):
    """An operator affine in its varying inputs; its own lower and upper linear bound.

    ``products``: operand indices of which at most one may vary (a product of two varying tensors is not affine);
    their constant partners are taken in absolute value for the interval radius. ``fixed``: operands that must be
    constant (a divisor, BatchNormalization's statistics). ``absolute``: further constants taken in absolute value
    (BatchNormalization's scale). ``negate``: varying operands entering with a minus sign (Sub's subtrahend).

    The interval is ``f(mid) -+ |f'(rad) - f'(0)|`` where ``f'`` is the operator with those constants made
    nonnegative, so that ``f'(rad) - f'(0) = |M| rad`` for the operator's matrix ``M``.
    """

    def __init__(self, products=(), fixed=(), absolute=(), negate=()):
        self.products = tuple(products)
        self.fixed = tuple(fixed)
        self.absolute = tuple(absolute) + tuple(products)
        self.negate = tuple(negate)

    def check(self, op, args) -> None:
        vary = set(varying_indices(args))
        if len(vary & set(self.products)) > 1:
            raise UnsupportedOperator(op.onnx_name, op.op_type, "product of two varying tensors")
        if vary & set(self.fixed):
            raise UnsupportedOperator(op.onnx_name, op.op_type, "an operand that must be constant varies")

    def _magnitude_args(self, args, zero: bool) -> list:
        out = []
        for i, a in enumerate(args):
            if isinstance(a, Interval):
                r = torch.zeros_like(a.rad) if zero else a.rad
                out.append(-r if i in self.negate else r)
            elif i in self.absolute and isinstance(a, torch.Tensor) and a.is_floating_point():
                out.append(a.abs())
            else:
                out.append(a)
        return out

    def interval(self, op, args) -> Interval:
        mid = first_output(op(*[a.mid if isinstance(a, Interval) else a for a in args]))
        reach = first_output(op(*self._magnitude_args(args, False)))
        spread = (reach - first_output(op(*self._magnitude_args(args, True)))).abs()
        return Interval(mid - spread, mid + spread)

    def affine(self, op, args):
        """``(g, g)``: the operator as a function of its varying inputs (constants fixed)."""
        index = varying_indices(args)

        def g(*xs):
            full = list(args)
            for i, x in zip(index, xs):
                full[i] = x
            return first_output(op(*full))

        return g, g


class Passthrough(Linear):
    """An exact-arithmetic identity on values (a Cast to float32 or wider): bounds pass unchanged. A cast to a
    coarser float (float16, bfloat16) or to an integer rounds, which no relaxation here covers."""

    def check(self, op, args) -> None:
        dtype = getattr(op, "dtype", torch.float32)
        if not dtype.is_floating_point:
            raise UnsupportedOperator(op.onnx_name, op.op_type, "a cast to an integer type rounds")
        if torch.finfo(dtype).eps > torch.finfo(torch.float32).eps:
            raise UnsupportedOperator(op.onnx_name, op.op_type, f"a cast to {dtype} rounds to a coarser grid")

    def interval(self, op, args) -> Interval:
        return args[0]

    def affine(self, op, args):
        def g(x):
            return x

        return g, g


class ReluLike(Relaxation):
    """``x`` for ``x >= 0``, ``a x`` below (Relu: a = 0, LeakyRelu: alpha, PRelu: a constant slope tensor).

    Unstable neurons (l < 0 < u): for a <= 1 the function is convex, the chord through (l, a l), (u, u) is the upper
    bound and any line ``s x`` with s in [a, 1] a lower one; for a > 1 the roles swap. ``s`` is CROWN's adaptive
    choice (1 where u >= -l, else a) or, in alpha-CROWN, ``a + theta (1 - a)`` with an optimised theta in [0, 1].
    """

    elementwise = True
    optimisable = True

    def __init__(self, slope_attribute: str | None = None, slope_input: int | None = None):
        self.slope_attribute = slope_attribute
        self.slope_input = slope_input

    def check(self, op, args) -> None:
        if self.slope_input is not None and isinstance(args[self.slope_input], Interval):
            raise UnsupportedOperator(op.onnx_name, op.op_type, "a varying slope")

    def negative_slope(self, op, args, like: torch.Tensor) -> torch.Tensor:
        if self.slope_input is not None:
            slope = args[self.slope_input].to(like.dtype)
        else:
            slope = torch.tensor(getattr(op, self.slope_attribute) if self.slope_attribute else 0.0, dtype=like.dtype,
                                 device=like.device)
        return torch.broadcast_to(slope, like.shape)

    def interval(self, op, args) -> Interval:
        x = args[0]
        a = self.negative_slope(op, args, x.lo)

        def f(t):
            return torch.where(t >= 0, t, a * t)

        values = torch.stack([f(x.lo), f(x.hi), f(torch.clamp(torch.zeros_like(x.lo), x.lo, x.hi))])
        return Interval(values.amin(0), values.amax(0))

    def needs_bounds(self, lo, hi):
        return (lo < 0) & (hi > 0)

    def default_theta(self, lo, hi) -> torch.Tensor:
        return (hi >= -lo).to(lo.dtype)

    def slopes(self, op, args, theta: torch.Tensor | None = None):
        """``(lower slope, lower intercept, upper slope, upper intercept)``; with ``theta`` the slopes of unstable
        neurons carry its leading (specification) dimension."""
        x = args[0]
        lo, hi = x.lo, x.hi
        a = self.negative_slope(op, args, lo)
        on, off = lo >= 0, hi <= 0
        unstable = ~on & ~off
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        chord = torch.where(unstable, (hi - a * lo) / width, torch.zeros_like(lo))
        chord_icpt = torch.where(unstable, lo * (a - chord), torch.zeros_like(lo))
        theta = self.default_theta(lo, hi) if theta is None else theta
        line = a + theta * (1 - a)
        stable = torch.where(on, torch.ones_like(lo), a)
        convex = a <= 1
        zero = torch.zeros_like(lo)
        lower_slope = torch.where(unstable, torch.where(convex, line, chord), stable)
        lower_icpt = torch.where(unstable & ~convex, chord_icpt, zero)
        upper_slope = torch.where(unstable, torch.where(convex, chord, line), stable)
        upper_icpt = torch.where(unstable & convex, chord_icpt, zero)
        return lower_slope, lower_icpt, upper_slope, upper_icpt

    def slope_range(self, op, args) -> torch.Tensor:
        """Largest |slope| over each element's box (local Lipschitz): 0 stably off for Relu, 1 stably on."""
        x = args[0]
        a = self.negative_slope(op, args, x.lo).abs()
        one = torch.ones_like(x.lo)
        return torch.where(x.lo >= 0, one, torch.where(x.hi <= 0, a, torch.maximum(a, one)))


class SShaped(Relaxation):
    """Sigmoid / Tanh: increasing, convex below 0 and concave above, derivative largest at 0.

    Below 0: chord above, tangent at the midpoint below; above 0 the reverse. Across 0 (DeepPoly, Singh et al.
    2019): with lam the smaller endpoint derivative, ``f(l) + lam (x - l) <= f(x) <= f(u) + lam (x - u)``, sound
    because f' >= lam on [l, u]. Boxes narrower than 1e-9 use the constants f(l), f(u).
    """

    elementwise = True
    optimisable = False

    def __init__(self, fn, derivative):
        self.fn = fn
        self.derivative = derivative

    def interval(self, op, args) -> Interval:
        return Interval(self.fn(args[0].lo), self.fn(args[0].hi))

    def slopes(self, op, args, theta=None):
        lo, hi = args[0].lo, args[0].hi
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        narrow = (hi - lo) < 1e-9
        width = torch.where(narrow, torch.ones_like(lo), hi - lo)
        chord = (f_hi - f_lo) / width
        mid = (lo + hi) / 2
        tangent = self.derivative(mid)
        tangent_icpt = self.fn(mid) - tangent * mid
        chord_icpt = f_lo - chord * lo
        lam = torch.minimum(self.derivative(lo), self.derivative(hi))
        below, above = hi <= 0, lo >= 0
        lower_slope = torch.where(below, tangent, torch.where(above, chord, lam))
        lower_icpt = torch.where(below, tangent_icpt, torch.where(above, chord_icpt, f_lo - lam * lo))
        upper_slope = torch.where(below, chord, torch.where(above, tangent, lam))
        upper_icpt = torch.where(below, chord_icpt, torch.where(above, tangent_icpt, f_hi - lam * hi))
        zero = torch.zeros_like(lo)
        return (torch.where(narrow, zero, lower_slope), torch.where(narrow, f_lo, lower_icpt),
                torch.where(narrow, zero, upper_slope), torch.where(narrow, f_hi, upper_icpt))

    def slope_range(self, op, args) -> torch.Tensor:
        """Largest derivative over the box: at the point of the box nearest 0."""
        lo, hi = args[0].lo, args[0].hi
        return self.derivative(torch.clamp(torch.zeros_like(lo), lo, hi))


def sigmoid_derivative(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def tanh_derivative(x):
    t = torch.tanh(x)
    return 1 - t * t


class WindowMax(Relaxation):
    """MaxPool over 2-D windows: ``x_j <= max <= max(u)`` with j the window's element of largest lower bound;
    where that element's lower bound reaches every other element's upper bound the max is exactly ``x_j``."""

    def check(self, op, args) -> None:
        if args[0].lo.dim() != 4:
            raise UnsupportedOperator(op.onnx_name, op.op_type, "only 2-D max pooling has a relaxation")
        if getattr(op, "with_indices", False):
            raise UnsupportedOperator(op.onnx_name, op.op_type, "the Indices output")

    @staticmethod
    def windows(op, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(N, C, window, out_h, out_w): every window's entries, padding filled with ``fill``."""
        padded, out = op.padded_for_windows(x, fill)
        n, c = padded.shape[:2]
        strides, dilations = op.axis_strides(2), op.axis_dilations(2)
        cols = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), op.kernel_shape, dilation=dilations,
                        stride=strides)
        spans = op.window_spans(op.kernel_shape)
        rows = [(padded.shape[2 + i] - spans[i]) // strides[i] + 1 for i in range(2)]
        cols = cols.reshape(n, c, cols.shape[1], *rows)
        return cols[..., : out[0], : out[1]]

    def interval(self, op, args) -> Interval:
        x = args[0]
        return Interval(self.windows(op, x.lo, float("-inf")).amax(2), self.windows(op, x.hi, float("-inf")).amax(2))

    def affine(self, op, args):
        x = args[0]
        lo_w = self.windows(op, x.lo, float("-inf"))
        hi_w = self.windows(op, x.hi, float("-inf"))
        best = lo_w.argmax(2, keepdim=True)
        best_lo = lo_w.gather(2, best).squeeze(2)
        others_hi = hi_w.scatter(2, best, float("-inf")).amax(2)
        exact = best_lo >= others_hi
        top = hi_w.amax(2)

        def chosen(t):
            return self.windows(op, t, 0.0).gather(2, best).squeeze(2)

        def upper(t):
            return torch.where(exact, chosen(t), top)

        return chosen, upper
