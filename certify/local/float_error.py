"""An elementwise bound on the float32 forward error of every tensor, over the region a propagation covers.

Bounds from :mod:`certify.local.bounds` hold for the exact function the weights define; the deployed network runs
in float32. For every varying tensor t this module bounds ``e_t >= |fl(t)(x') - t(x')|`` elementwise, for every
float32 input x' of the region, ``fl`` being float32 evaluation with any summation order (and fused multiply-adds):
standard forward error analysis (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1 and 3.5),
``u = 2^-24``, ``gamma_n = n u / (1 - n u)``. One forward sweep, reusing the propagation's boxes ``[lo, hi]`` of
the exact tensors; ``m_t = max(|lo|, |hi|) + e_t`` bounds ``|fl(t)|``:

- an affine node ``y = M z + b`` with at most n nonzero terms per output: ``e_y <= |M| e_z + gamma_{n+k}
  (|M| m_z + |b|)`` (n counted per output element: a product with an exact zero is exact; k of
  :data:`EXTRA_ROUNDINGS`: Gemm's bias, alpha and beta, a convolution's bias, a mean's division; a dot product in
  any order, fused multiply-adds or not, needs none: ``gamma_n``; an entrywise Add, Sub or Div by a constant
  counts its 2 operands). ``|M| v`` is the relaxation's interval spread over ``[-v, v]``; BatchNormalization
  counts 8 roundings per term, of ``|scale| (m + |mean|) / sqrt(var + eps) + |B|``;
- copies and selections (reshapes, slices, pads, concatenations, casts to float32 or wider, Neg) are exact; a
  max-pool window errs by at most the largest error in it;
- Relu-like units are ``max(1, |a|)``-Lipschitz, plus one rounding of ``a x``; a neuron whose float
  pre-activation ``[lo - e, hi + e]`` is ``<= 0`` (Relu) is exactly 0 in both: no error;
- Sigmoid and Tanh: the largest slope over ``[lo - e, hi + e]`` times e, plus the library allowance of
  :data:`certify.lipschitz.rounding.LIBRARY_ULPS` ulps of ``max(|in|, |out|)`` (the one assumption not derived);
- underflow: every node adds ``2^-126 (|M| 1 + n + 4)`` (flushed denormal operands and results);
- our own float64 arithmetic: each node's bound is widened by ``4 gamma_d`` (u = 2^-53, d the widest tensor)
  relative to ``e`` and to the magnitude ``|M| m + |b|`` (which also covers cancellation in the spread).

For a specification row c, :meth:`ForwardErrors.spec` also carries each node's own rounding backward to ``c . y``
through the exact linear maps and the secant slopes of the units (signs kept, so weights cancel) and keeps the
smaller of that and ``|c| . e``. Two schemes for a unit whose slope is uncertain (an unstable one): carry the
coefficient as an interval (its spread then travels through ``|M|^T`` of every earlier layer), or keep the
midpoint and charge the spread at once against the unit input's own error bound (``collapse``, tighter by an
order of magnitude on deep nets); ``spec`` takes the smaller. Intermediate tensors are tightened the same way
(collapse), per sample only on the elements that matter: for a tensor read by Relu-like units only, those whose
float interval ``[lo - e, hi + e]`` straddles the kink (elsewhere the error just moves through), the largest
first, within a row budget.

Dot products are assumed to be sums of products (any order); Winograd or FFT convolutions are not covered. A
bias added by a separate Add node is assumed added to the finished dot product (one rounding; BLAS-style
``C + A B``), as before. Any
other operator raises :class:`~certify.local.rules.UnsupportedOperator`; callers fall back to the global bound of
:mod:`certify.lipschitz.rounding`, never to 0.
"""

from __future__ import annotations

import torch
from torch.func import vjp, vmap

from certify.lipschitz.rounding import LIBRARY_ULPS
from certify.local import rules
from certify.local.rules import Interval, Linear, Passthrough, ReluLike, SShaped, UnsupportedOperator, WindowMax

UNIT_ROUNDOFF = 2.0**-24
TINY = 2.0**-126
#: Affine operators that only move, copy or negate entries: no rounding.
EXACT = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "Pad", "Tile",
         "Expand", "Dropout", "Identity", "Neg", "Cast"}
#: Affine operators whose fan-in is the number of nonzero weights per output (their weight is a product operand).
WEIGHTED = {"Gemm", "MatMul", "Conv", "ConvTranspose", "Mul"}
#: Entrywise affine arithmetic: one rounding per input (and one for Mean's division).
ENTRYWISE = {"Add", "Sub", "Div", "Sum", "Mean"}
POOLS = {"AveragePool", "GlobalAveragePool"}
#: Roundings per output element beyond the n - 1 additions and n products of its n terms (``gamma_n``): Gemm's
#: bias add, alpha and beta; a convolution's bias; the division of a mean (a product with a rounded reciprocal);
#: BatchNormalization's 8 per term.
EXTRA_ROUNDINGS = {"Gemm": 3, "Conv": 1, "ConvTranspose": 1, "Mean": 2, "AveragePool": 2, "GlobalAveragePool": 2,
                   "BatchNormalization": 4}
#: The signed backward bound of a tensor's errors costs a backward pass per element and sample: it is spent up to
#: these many (elements x samples) and (elements x samples x widest tensor), the largest errors first (the interval
#: scheme: all of a tensor's elements or none, as few samples are bounded at once: a whole box, the root of a
#: search, whose bounds then serve as ``prior`` for the parts), and only on elements whose forward bound exceeds
#: this fraction of their magnitude.
SIGNED_ROWS, SIGNED_LIMIT, SIGNED_RELATIVE = 4096, 2**22, 1e-4


def gamma(n, u: float = UNIT_ROUNDOFF):
    """Higham's ``gamma_n = n u / (1 - n u)`` (elementwise for a tensor n; inf where n u >= 1)."""
    nu = n * u
    if isinstance(nu, torch.Tensor):
        return torch.where(nu < 1, nu / (1 - nu).clamp(min=1e-300), torch.full_like(nu, torch.inf))
    return nu / (1 - nu) if nu < 1 else float("inf")


def _maxabs(box: Interval) -> torch.Tensor:
    return torch.maximum(box.lo.abs(), box.hi.abs())


def _symmetric(args, values: dict, names) -> list:
    """``args`` with each varying input replaced by the symmetric box ``[-v, v]`` of its value in ``values``."""
    return [Interval(-values[n], values[n]) if isinstance(a, Interval) else a for a, n in zip(args, names)]


def _kinked(prop) -> set[str]:
    """Tensors whose nonlinear readers are all Relu-like units (their slope is known off the kink)."""
    readers: dict[str, list] = {}
    for _, op, inputs, _ in prop._live_steps():
        if not isinstance(op.relaxation, Linear):
            readers.setdefault(inputs[0], []).append(op.relaxation)
    return {n for n, rules_ in readers.items() if all(isinstance(r, ReluLike) for r in rules_)}


class ForwardErrors:
    """``errors[name]``: the elementwise float32 error bound of every varying tensor of ``prop`` (N, *shape)."""

    def __init__(self, prop, u: float = UNIT_ROUNDOFF, prior: dict | None = None, signed: bool = True,
                 relative: float = SIGNED_RELATIVE, collapse: bool = True):
        self.prop, self.u, self.signed, self.relative, self.collapse = prop, u, signed, relative, collapse
        self.kinked = _kinked(prop)
        widest = max(b.lo[0].numel() for b in prop.bounds.values())
        self.widest = widest
        self.slack = 4 * gamma(widest, 2.0**-53)
        first = prop.bounds[prop.input_name].lo
        self.errors = {prop.input_name: torch.zeros_like(first)}
        self.local: dict[str, torch.Tensor] = {}  # each node's own rounding
        self.slopes: dict[str, tuple | str] = {}  # secant slope range of an elementwise unit, or "linear"/"max"
        with torch.no_grad():
            for _, op, inputs, outputs in prop._live_steps():
                name = outputs[0]
                moved, local, slopes = self._node(op, inputs)
                self.local[name], self.slopes[name] = local, slopes
                self.errors[name] = self._tightened(name, moved + local, (prior or {}).get(name))

    def _tightened(self, name: str, error: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """``error`` of a tensor a nonlinear unit reads, tightened by the signed backward bound of its elements
        (:meth:`backward` from that tensor, where its size allows) and by ``prior`` (the same tensor's bound over a
        region containing this one). The forward bound ``|M| e`` drops the signs of the weights; left to grow layer
        after layer it also makes later units look unstable in float32 and inflates magnitudes."""
        if prior is not None:
            error = torch.minimum(error, prior.to(error))
        if not self.signed or name not in self.prop.reads or name == self.prop.output_name:
            return error
        flat = error.flatten(1)
        wanted = flat > self.relative * _maxabs(self.prop.bounds[name]).flatten(1)
        if not self.collapse:
            wanted = wanted.any(0, keepdim=True).expand_as(wanted)
        elif name in self.kinked:  # a stable Relu-like neuron's error only moves through: its slope is known
            box = self.prop.bounds[name]
            wanted = wanted & ((box.lo - error < 0) & (box.hi + error > 0)).flatten(1)
        picked = self._rows(flat, wanted)
        if picked is None:
            return error
        index, valid = picked
        n, count = flat.shape[0], index.shape[1]
        rows = torch.zeros((count, n, flat.shape[1]), dtype=error.dtype, device=error.device)
        rows.permute(1, 0, 2).scatter_(2, index[..., None], valid[..., None].to(error.dtype))
        signed = self.backward(rows.reshape(count, *error.shape), name, collapse=self.collapse)
        if signed is None:
            return error
        depth = len(self.local) + 1
        old = flat.gather(1, index)
        bound = torch.where(valid, torch.minimum(old, signed.T * (1 + self.slack) + depth * self.slack * old), old)
        return flat.clone().scatter_(1, index, bound).reshape(error.shape)

    def _rows(self, flat: torch.Tensor, wanted: torch.Tensor) -> tuple | None:
        """Per sample, the elements to bound (N, K) and which of them are real: the ``wanted`` ones, the largest
        first, K at most what the budgets (:data:`SIGNED_ROWS`, :data:`SIGNED_LIMIT`) allow; the interval scheme
        takes all or none. None when there are none or, interval scheme, too many."""
        n = flat.shape[0]
        count = int(wanted.sum(1).max())
        budget = min(SIGNED_ROWS // n, SIGNED_LIMIT // (n * self.widest))
        if count == 0 or (not self.collapse and count > budget):
            return None
        count = min(count, budget)
        if count == 0:
            return None
        top = torch.where(wanted, flat, torch.full_like(flat, -1.0)).topk(count, dim=1)
        return top.indices, top.values >= 0

    @property
    def output(self) -> torch.Tensor:
        return self.errors[self.prop.output_name]

    def spec(self, c: torch.Tensor) -> torch.Tensor:
        """A bound on the error of ``c . y`` for specification rows c (S, N, *output): (S, N). The smaller of
        ``|c| . e`` and, where every operator allows it, the backward bounds of :meth:`backward` (both schemes)."""
        c = c.to(self.output.device, torch.float64)
        forward = (c.abs() * self.output).flatten(2).sum(-1) * (1 + self.slack)
        with torch.no_grad():
            carried = self.backward(c)
            if carried is not None and self.collapse:
                carried = torch.minimum(carried, self.backward(c, collapse=True))
            backward = carried
        if backward is None:
            return forward
        depth = len(self.local) + 1
        return torch.minimum(forward, backward * (1 + self.slack) + depth * self.slack * forward)

    def backward(self, c: torch.Tensor, target: str | None = None, collapse: bool = False) -> torch.Tensor | None:
        """``sum_k |c J_k| . local_k``: each node's rounding carried to ``c . y`` through the exact linear maps and
        the secant slopes of the elementwise units (an interval per coefficient, ``[min(a, 1), max(a, 1)]`` for
        an unstable Relu-like unit); unlike ``|c| . e`` it keeps the signs of the weights, which cancel. None when
        a max-pool lies on the way (its error is not a linear image). ``collapse``: a unit whose coefficient
        times slope spans ``m +- r`` passes on the point m alone and is charged ``r . e_in`` (its input's whole
        error bound: the part ``(s - centre) delta_in`` of its error), so coefficients stay points and keep their
        signs through later layers, where the interval scheme spreads every r through ``|M|^T``. Rounding of this
        float64 pass is covered by :meth:`spec`'s ``depth * slack * |c| . e`` (every coefficient is at most the
        absolute product, and ``e`` is at least ``|J| e_in``)."""
        prop = self.prop
        target = prop.output_name if target is None else target
        acc = {target: (c, torch.zeros_like(c))}
        total = torch.zeros(c.shape[:2], dtype=c.dtype, device=c.device)
        for index in range(prop.producer[target], -1, -1):
            op, inputs, outputs = prop.steps[index]
            if outputs[0] not in acc:
                continue
            mid, rad = acc.pop(outputs[0])
            total = total + ((mid.abs() + rad) * self.local[outputs[0]]).flatten(2).sum(-1)
            slopes = self.slopes[outputs[0]]
            vary = [i for i, n in enumerate(inputs) if n in self.errors]
            if slopes == "max":
                return None
            if slopes == "copy":
                parts = [(mid, rad)]
            elif slopes == "linear":
                moved = prop._affine(index)[0](mid)
                spread = [torch.zeros_like(m) for m in moved] if collapse else self._magnitude_map(index)(rad)
                parts = list(zip(moved, (r.abs() for r in spread)))
            else:
                low, high = mid - rad, mid + rad
                corners = torch.stack([low * slopes[0], low * slopes[1], high * slopes[0], high * slopes[1]])
                top, bottom = corners.amax(0), corners.amin(0)
                parts = [((top + bottom) / 2, (top - bottom) / 2)]
                if collapse:
                    total = total + (parts[0][1] * self.errors[inputs[0]]).flatten(2).sum(-1)
                    parts = [(parts[0][0], torch.zeros_like(mid))]
            for i, (m, r) in zip(vary, parts):
                name = inputs[i]
                if name in acc:
                    m, r = m + acc[name][0], r + acc[name][1]
                acc[name] = (m, r)
        return total

    def _magnitude_map(self, index: int):
        """The VJP of an affine step's map with its constants in absolute value (``|M|^T``, one sign per map)."""
        op, inputs, _ = self.prop.steps[index]
        rule = op.relaxation
        args = self.prop._args(inputs, self.prop.bounds)

        def g(*xs):
            values, full = iter(xs), []
            for i, a in enumerate(args):
                if isinstance(a, Interval):
                    x = next(values)
                    full.append(-x if i in rule.negate else x)
                elif i in rule.absolute and isinstance(a, torch.Tensor) and a.is_floating_point():
                    full.append(a.abs())
                else:
                    full.append(a)
            return rules.first_output(op(*full))

        _, pullback = vjp(g, *[torch.zeros_like(a.lo) for a in args if isinstance(a, Interval)])
        return vmap(pullback)

    def _magnitudes(self, inputs) -> dict:
        return {n: _maxabs(self.prop.bounds[n]) + self.errors[n] for n in inputs if n in self.errors}

    def _node(self, op, inputs) -> tuple:
        """``(error carried in, own rounding, slopes)`` of one step."""
        rule = op.relaxation
        args = self.prop._args(inputs, self.prop.bounds)
        if isinstance(rule, ReluLike):
            return self._relu(op, rule, args, inputs[0])
        if isinstance(rule, SShaped):
            return self._s_shaped(op, rule, args, inputs[0])
        if isinstance(rule, WindowMax):
            moved = rule.windows(op, self.errors[inputs[0]], 0.0).amax(2)
            return moved, torch.zeros_like(moved), "max"
        if not isinstance(rule, Linear):
            raise UnsupportedOperator(op.onnx_name, op.op_type, "no float32 error rule")
        moved = rule.interval(op, _symmetric(args, self.errors, inputs)).rad.abs()
        if isinstance(rule, Passthrough):
            return moved, torch.zeros_like(moved), "copy"
        if op.op_type in EXACT:
            return moved, torch.zeros_like(moved), "linear"
        return moved * (1 + self.slack), self._rounding(op, rule, args, inputs), "linear"

    def _rounding(self, op, rule: Linear, args, inputs) -> torch.Tensor:
        """An affine node's own rounding, ``gamma_{n + extra} (|M| m + |b|)`` plus underflow."""
        count = self._terms(op, rule, args, inputs)
        factor = gamma(count + EXTRA_ROUNDINGS.get(op.op_type, 0), self.u) + self.slack
        ones = {n: torch.ones_like(self.errors[n]) for n in inputs if n in self.errors}
        weights = rule.interval(op, _symmetric(args, ones, inputs)).rad.abs()
        underflow = TINY * (weights + count + 4)
        if op.op_type == "BatchNormalization":
            x, scale, bias, mean, var = args[:5]
            m = self._magnitudes(inputs)[inputs[0]]
            size = op(m, scale.abs(), bias.abs(), -mean.abs(), var)
        else:
            size = _maxabs(rule.interval(op, _symmetric(args, self._magnitudes(inputs), inputs)))
        return factor * size + underflow

    def _terms(self, op, rule: Linear, args, inputs):
        """Terms summed per output element (a tensor or a number)."""
        kind = op.op_type
        if kind in WEIGHTED:
            marks = []
            for i, a in enumerate(args):
                if isinstance(a, Interval):
                    one = torch.ones_like(a.lo)
                    marks.append(Interval(-one, one))
                elif i in rule.products and isinstance(a, torch.Tensor):
                    marks.append((a != 0).to(a.dtype))
                else:
                    marks.append(a)
            count = rule.interval(op, marks).rad.abs()
            alpha = abs(float(getattr(op, "alpha", 1.0))) if kind == "Gemm" else 1.0
            return count / alpha if alpha > 0 else count
        if kind in ENTRYWISE:
            return float(len([n for n in inputs if n]))
        if kind == "BatchNormalization":
            return 4.0
        if kind in POOLS:
            if kind == "AveragePool":
                return float(torch.tensor(op.kernel_shape).prod())
            x = self.errors[inputs[0]]
            return float(x[0, 0].numel())
        raise UnsupportedOperator(op.onnx_name, kind, "no float32 error rule")

    def _relu(self, op, rule: ReluLike, args, name) -> tuple:
        box, e = args[0], self.errors[name]
        a = rule.negative_slope(op, args, box.lo).abs()
        lo, hi = box.lo - e, box.hi + e
        on, off = lo >= 0, hi <= 0
        slope = torch.where(on, torch.ones_like(a), torch.where(off, a, torch.maximum(a, torch.ones_like(a))))
        m = _maxabs(box) + e
        product = torch.where(on | (a == 0), torch.zeros_like(a), (self.u + self.slack) * a * m + TINY)
        signed = rule.negative_slope(op, args, box.lo)
        one = torch.ones_like(signed)
        low = torch.where(on, one, torch.where(off, signed, torch.minimum(signed, one)))
        high = torch.where(on, one, torch.where(off, signed, torch.maximum(signed, one)))
        return slope * e * (1 + self.slack), product, (low, high)

    def _s_shaped(self, op, rule: SShaped, args, name) -> tuple:
        box, e = args[0], self.errors[name]
        wide = Interval(box.lo - e, box.hi + e)
        slope = rule.slope_range(op, [wide])
        out = _maxabs(rule.interval(op, [wide]))
        allowance = gamma(LIBRARY_ULPS, self.u) * torch.maximum(_maxabs(wide), out) + TINY
        return slope * e * (1 + self.slack), allowance + self.slack * out, (torch.zeros_like(slope), slope)


def forward_errors(prop, prior: dict | None = None, signed: bool = True) -> ForwardErrors:
    """The float32 forward error bounds over ``prop``'s region (see the module docstring); ``prior``: bounds per
    tensor already known over a region containing it (e.g. the whole box of a subdomain); ``signed`` False skips
    the signed backward bounds of intermediate tensors (cheaper, when ``prior`` already has them)."""
    return ForwardErrors(prop, prior=prior, signed=signed)
