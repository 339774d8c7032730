"""Bound propagation over a converted graph: interval bounds (IBP), CROWN and alpha-CROWN.

For a batch of input regions (:class:`~certify.local.region.Region`), :class:`Propagation` walks the graph once
in topological order and keeps a box for every tensor that varies with the input: the interval image of its
inputs' boxes, intersected (method ``"crown"``) with CROWN bounds for every tensor a nonlinear relaxation reads.
CROWN (Zhang et al. 2018) propagates linear coefficients backward from a target (a node's neurons, or a
specification ``C y`` on the output) to the input through each operator's linear relaxation (``certify.local.
rules``): affine operators by their vector-Jacobian product, activations by their slopes; a tensor read twice
(residual branches) sums its coefficients. alpha-CROWN (Xu et al. 2021) optimises the lower-line slopes of
Relu-like units per neuron and per specification row with Adam; every iterate is a valid bound, so the best one
per row is kept.

Branch and bound (beta-CROWN, Wang et al. 2021) passes ``splits``: per Relu-like pre-activation tensor, a sign per
sample and neuron (+1: the subdomain where it is >= 0, -1: <= 0, 0: free). The split intersects that tensor's box
(so the unit's relaxation becomes its exact linear piece, and later layers see the tighter box), and alpha-CROWN on
the output also optimises one multiplier ``beta >= 0`` per split neuron: ``f(x) >= f(x) - beta s z(x)`` wherever
``s z(x) >= 0``, so adding ``-beta s`` to the coefficients reaching ``z`` keeps every bound valid on the subdomain.
``prior`` boxes (a parent subdomain's bounds) are intersected too; with ``keep_prior`` a tensor with a prior box is
not refined by CROWN again (the cheap mode of beta-CROWN: only the output bound is re-optimised); ``keep_prior``
may also name the tensors to keep (those before a new split cannot change, the later ones are re-bounded). A
sample whose box becomes empty (``lo > hi``) is an empty subdomain (:meth:`Propagation.infeasible`). ``deadline``
(``time.monotonic()``) makes long sweeps and optimisations raise :class:`BoundTimeout` between steps.

Soundness in floating point. Everything runs in float64 (round to nearest, unit roundoff u = 2^-53). Every
computed quantity is a sum of at most ``n`` products (``n`` the largest tensor per sample), so each accumulation
errs by at most ``gamma_n = n u / (1 - n u)`` times the sum of the absolute terms (Higham, Accuracy and Stability
of Numerical Algorithms, Thm 3.1), and a pass through ``d`` operators at most ``d gamma_n`` times the absolute
product ``|C| |M_d| ... |M_1| |x|`` (first order). That product is bounded, node by node, by the interval image
``m`` of the symmetric box ``[-|x|max, |x|max]`` (every relaxation slope is at most the operator's largest slope,
every intercept at most ``m``). Each bound is therefore widened outward by ``4 (d + 2) gamma_n |C| m``, twice the
first-order estimate. What remains outside the claim is the network's own float32 arithmetic: bounds hold for
the exact function the weights define; a caller subtracts a float32 forward-error ``margin`` from certified
lower bounds to cover the deployed float32 network.
"""

from __future__ import annotations

import copy
import math
import time
import weakref

import torch
from torch.func import vjp, vmap

from certify.local.region import Region
from certify.local.rules import Interval, Linear, UnsupportedOperator

#: Operators whose output depends on the input's shape only, never its values.
SHAPE_ONLY = ("Shape", "Size")
UNIT_ROUNDOFF = 2.0**-53
DEFAULT_MEMORY = 2**28  # bytes of backward coefficients per chunk
#: Largest (rows x samples x widest tensor) for which intermediate bounds get optimised slopes; beyond it they
#: keep their CROWN bounds (optimising thousands of convolutional neurons costs more than it brings).
ALPHA_INTERMEDIATE_LIMIT = 2**22
#: Per dense operator module: the matrix of its linear part (see ``Propagation._dense_matrix``).
_DENSE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class BoundTimeout(Exception):
    """The propagation's deadline passed."""


def float64_graph(module, device="cpu"):
    """A float64 copy of a converted graph on ``device`` (the caller's module is untouched)."""
    return copy.deepcopy(module).to(device=device, dtype=torch.float64).eval()


def varying_names(graph) -> set[str]:
    """Tensors that vary with the graph's (single) input."""
    if len(graph.input_names) != 1:
        raise UnsupportedOperator("(graph)", "inputs", f"{len(graph.input_names)} graph inputs; one is supported")
    varying = {graph.input_names[0]}
    for op, inputs, outputs in graph.steps():
        if op.op_type not in SHAPE_ONLY and any(n in varying for n in inputs if n):
            varying.update(n for n in outputs if n)
    return varying


def check_supported(graph) -> None:
    """Raise :class:`UnsupportedOperator` naming the first varying node without a relaxation."""
    varying = varying_names(graph)
    for op, inputs, _ in graph.steps():
        if op.op_type not in SHAPE_ONLY and any(n in varying for n in inputs if n):
            if getattr(type(op), "relaxation", None) is None:
                raise UnsupportedOperator(op.onnx_name, op.op_type)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over the node dimensions of (S, N, *shape) coefficients times a broadcastable tensor: (S, N)."""
    return (a * b).flatten(2).sum(-1)


class Propagation:
    """Bounds of every varying tensor of ``graph`` (a :func:`float64_graph`) over ``region``.

    ``method``: ``"ibp"`` (interval only) or ``"crown"`` (intermediate bounds tightened by backward
    substitution to the input); ``alpha_steps`` > 0 optimises each intermediate bound's slopes too (alpha-CROWN,
    separate slopes per bounded neuron), until ``alpha_until`` (``time.monotonic()``; later intermediate bounds keep
    CROWN's slopes). ``bounds[name]`` is the :class:`Interval` of each varying tensor (batched over the region's
    samples). ``lower(C)`` bounds a specification on the graph's first output.
    """

    def __init__(self, graph, region: Region, method: str = "crown", memory: int = DEFAULT_MEMORY,
                 alpha_steps: int = 0, lr: float = 0.25, splits: dict | None = None, prior: dict | None = None,
                 deadline: float | None = None, keep_prior: bool | set = False, alpha_until: float | None = None):
        if method not in ("ibp", "crown"):
            raise ValueError(f"method must be 'ibp' or 'crown', not {method!r}")
        check_supported(graph)
        self.graph = graph
        param = next(iter(graph.buffers()), None)
        device = param.device if param is not None else torch.device("cpu")
        self.region = region.to(device, torch.float64)
        self.method = method
        self.memory = memory
        self.alpha_steps, self.lr = alpha_steps, lr
        self.splits = {n: t.to(self.region.lower.device, torch.float64) for n, t in (splits or {}).items()}
        self.prior = prior or {}
        self.keep = set(self.prior) if keep_prior is True else set(keep_prior or ()) & set(self.prior)
        self.deadline, self.alpha_until = deadline, alpha_until
        self.steps = list(graph.steps())
        self.varying = varying_names(graph)
        self.input_name = graph.input_names[0]
        self.output_name = graph.output_names[0]
        self.producer = {outs[0]: i for i, (_, _, outs) in enumerate(self.steps)}
        self.reads = {n for _, op, ins, _ in self._live_steps() if not isinstance(op.relaxation, Linear)
                      for n in ins if n in self.varying}
        with torch.no_grad():
            self.magnitude = self._shared()
            numel = max(self.magnitude[n].shape[1:].numel() for n in self.magnitude)
            gamma = numel * UNIT_ROUNDOFF / (1 - numel * UNIT_ROUNDOFF)
            self.rounding = 4 * (len(self.steps) + 2) * gamma
            self._affine_cache: dict[int, tuple] = {}
            self.bounds: dict[str, Interval] = {}
            self._sweep()

    def subset(self, index) -> Propagation:
        """The same bounds restricted to some samples (``index`` selects along the batch dimension)."""
        part = object.__new__(Propagation)
        part.__dict__.update(self.__dict__)
        part.region = self.region.subset(index)
        with torch.no_grad():
            _, part.env = self.graph.run(part.region.midpoint, keep=True)
        part.magnitude = {n: m[index] for n, m in self.magnitude.items()}
        part.bounds = {n: Interval(b.lo[index], b.hi[index]) for n, b in self.bounds.items()}
        part.splits = {n: t[index] for n, t in self.splits.items()}
        part.prior = {n: Interval(b.lo[index], b.hi[index]) for n, b in self.prior.items()}
        part._affine_cache = {}
        return part

    def derived(self, index, bounds: dict, splits: dict) -> Propagation:
        """Samples ``index`` (repeats allowed) of this propagation with the given boxes and split signs and no new
        sweep: a cheap view for bounding children whose boxes the caller derived soundly from these."""
        part = object.__new__(Propagation)
        part.__dict__.update(self.__dict__)
        part.region = self.region.subset(index)
        part.magnitude = {n: m[index] for n, m in self.magnitude.items()}
        part.bounds, part.splits, part.prior, part._affine_cache = bounds, splits, {}, {}
        if any(op.op_type in SHAPE_ONLY for op, _, _ in self.steps):  # shapes computed from the batch size
            with torch.no_grad():
                _, part.env = self.graph.run(part.region.midpoint, keep=True)
        return part

    def _tick(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BoundTimeout

    def infeasible(self) -> torch.Tensor:
        """Per sample, whether some box is empty: the subdomain its splits define contains no input."""
        empty = torch.zeros(self.region.lower.shape[0], dtype=torch.bool, device=self.region.lower.device)
        for box in self.bounds.values():
            empty |= (box.lo > box.hi).flatten(1).any(1)
        return empty

    def _restrict(self, name: str, box: Interval) -> Interval:
        """``box`` intersected with the prior box and the split signs of ``name``."""
        lo, hi = box.lo, box.hi
        if name in self.prior:
            lo, hi = torch.maximum(lo, self.prior[name].lo), torch.minimum(hi, self.prior[name].hi)
        if name in self.splits:
            sign = self.splits[name]
            lo = torch.where(sign > 0, lo.clamp(min=0), lo)
            hi = torch.where(sign < 0, hi.clamp(max=0), hi)
        return Interval(lo, hi)

    # --- forward sweep -------------------------------------------------------------------------------------
    def _args(self, inputs, boxes: dict) -> list:
        return [boxes[n] if n in boxes else (self.env.get(n) if n else None) for n in inputs]

    def _live_steps(self):
        for index, (op, inputs, outputs) in enumerate(self.steps):
            if op.op_type not in SHAPE_ONLY and any(n in self.varying for n in inputs if n):
                yield index, op, inputs, outputs

    def _shared(self) -> dict[str, torch.Tensor]:
        """Sets ``env`` (the graph's constants) and returns the magnitudes. When every sample has the same input
        box (the subdomains of a split search), both come from one sample: the magnitudes depend on the box only,
        and without shape operators no constant depends on the batch (varying tensors are read from the boxes)."""
        lower, upper = self.region.lower, self.region.upper
        one = (lower.shape[0] > 1 and self.region.center is None and bool((lower == lower[:1]).all())
               and bool((upper == upper[:1]).all()))
        first = self.region.subset(slice(0, 1)) if one else self.region
        shaped = any(op.op_type in SHAPE_ONLY for op, _, _ in self.steps)
        self.env = self.graph.run((self.region if shaped else first).midpoint, keep=True)[1]
        return {n: m.expand(lower.shape[0], *m.shape[1:]) for n, m in self._magnitudes(first).items()}

    def _magnitudes(self, region: Region) -> dict[str, torch.Tensor]:
        """Per-tensor bound on the absolute values entering any accumulation (the symmetric box's image)."""
        top = torch.maximum(region.lower.abs(), region.upper.abs())
        boxes = {self.input_name: Interval(-top, top)}
        for _, op, inputs, outputs in self._live_steps():
            out = op.relaxation.interval(op, self._args(inputs, boxes))
            boxes[outputs[0]] = out
        return {n: torch.maximum(b.lo.abs(), b.hi.abs()) for n, b in boxes.items()}

    def _sweep(self) -> None:
        self.bounds[self.input_name] = Interval(self.region.lower, self.region.upper)
        for _, op, inputs, outputs in self._live_steps():
            args = self._args(inputs, self.bounds)
            op.relaxation.check(op, args)
            box = op.relaxation.interval(op, args)
            pad = self.rounding * self.magnitude[outputs[0]]
            name = outputs[0]
            box = self._restrict(name, Interval(box.lo - pad, box.hi + pad))
            if self.method == "crown" and name in self.reads and name != self.input_name and name not in self.keep:
                self._tick()
                box = self._refine(name, box)
            self.bounds[name] = box

    def _consumers_need(self, name: str, box: Interval) -> torch.Tensor:
        need = torch.zeros_like(box.lo, dtype=torch.bool)
        for op, inputs, _ in self.steps:
            if name in inputs and not isinstance(op.relaxation, Linear):
                need |= op.relaxation.needs_bounds(box.lo, box.hi)
        return need

    def _refine(self, name: str, box: Interval) -> Interval:
        """CROWN bounds of the neurons of ``name`` that some relaxation needs, intersected with ``box``."""
        need = self._consumers_need(name, box).flatten(1).any(0)
        rows = need.nonzero().flatten()
        if rows.numel() == 0:
            return box
        n = box.lo.shape[0]
        shape = box.lo.shape[1:]
        lo, hi = box.lo.flatten(1).clone(), box.hi.flatten(1).clone()
        for chunk in rows.split(self._chunk_rows(2)):
            self._tick()
            r = chunk.numel()
            a = torch.zeros((2 * r, n, shape.numel()), dtype=torch.float64, device=lo.device)
            a[torch.arange(r, device=lo.device), :, chunk] = 1.0
            a[torch.arange(r, 2 * r, device=lo.device), :, chunk] = -1.0
            a = a.reshape(2 * r, n, *shape)
            low = self.linear_lower(name, a) - self._rounding_of(name, a)
            if self.alpha_steps > 0 and 2 * r * n * self._widest() <= ALPHA_INTERMEDIATE_LIMIT:
                with torch.enable_grad():
                    low = torch.maximum(low, self._optimised(name, a, self.alpha_steps, self.lr))
            lo[:, chunk] = torch.maximum(lo[:, chunk], low[:r].T)
            hi[:, chunk] = torch.minimum(hi[:, chunk], -low[r:].T)
        return Interval(lo.reshape(box.lo.shape), hi.reshape(box.hi.shape))

    def _widest(self) -> int:
        return max(b.shape[1:].numel() for b in self.magnitude.values())

    def _chunk_rows(self, copies: int) -> int:
        n = self.region.lower.shape[0]
        return max(1, int(self.memory // (8 * copies * n * self._widest())))

    # --- backward pass -------------------------------------------------------------------------------------
    def _affine(self, index: int):
        """Cached (lower map VJP, lower offset, upper map VJP, upper offset) of an affine-relaxed step."""
        if index not in self._affine_cache:
            op, inputs, _ = self.steps[index]
            args = self._args(inputs, self.bounds)
            g_lower, g_upper = op.relaxation.affine(op, args)
            zeros = [torch.zeros_like(a.lo) for a in args if isinstance(a, Interval)]
            off_l, vjp_l = vjp(g_lower, *zeros)
            matrix = self._dense_matrix(op, inputs, args)
            if matrix is not None:  # one product per backward step (no vmap, cheap to differentiate)
                entry = (lambda coef, m=matrix: (coef @ m,), off_l, None, None)
            elif g_upper is g_lower:
                entry = (vmap(vjp_l), off_l, None, None)
            else:
                off_u, vjp_u = vjp(g_upper, *zeros)
                entry = (vmap(vjp_l), off_l, vmap(vjp_u), off_u)
            self._affine_cache[index] = entry
        return self._affine_cache[index]

    def _dense_matrix(self, op, inputs, args) -> torch.Tensor | None:
        """``M`` (out, k) with ``x @ M.T`` the linear part of a Gemm or MatMul whose only varying operand is its
        2-D first one (x: (N, k)) and whose others are graph constants: the same map for every sample, taken from
        the operator on the unit vectors (each entry is one weight times the scale, as in the forward)."""
        x = args[0]
        if op.op_type not in ("Gemm", "MatMul") or getattr(op, "trans_a", False) or not isinstance(x, Interval):
            return None
        if x.lo.dim() != 2 or any(n and self.graph.constant(n) is None for n in inputs[1:]):
            return None
        k = x.lo.shape[1]
        key = (k, x.lo.dtype, x.lo.device)
        if _DENSE.get(op, (None,))[0] != key:  # the matrix depends on the operator's constants only
            eye = torch.eye(k, dtype=x.lo.dtype, device=x.lo.device)
            with torch.no_grad():
                out = op(eye, *args[1:2]) if op.op_type == "Gemm" else op(eye, *args[1:])
            _DENSE[op] = (key, out.T.contiguous() if out.dim() == 2 and out.shape[0] == k else None)
        return _DENSE[op][1]

    def backward(self, target: str, a: torch.Tensor, thetas: dict | None = None, betas: dict | None = None,
                 record: dict | None = None):
        """Coefficients on the input and the constant: ``a . target >= A_in . x + bias`` over the region.

        ``a`` is (S, N, *target shape); ``thetas`` maps step indices of Relu-like steps to alpha-CROWN slope
        parameters (S, N, *shape), ``betas`` to the (nonnegative) multipliers of their split constraints;
        ``record``, when given, receives each elementwise step's output coefficients (S, N, *shape) by step index.
        Returns ``(A_in (S, N, *input), bias (S, N))``.
        """
        acc = {target: a}
        bias = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
        for index in range(self.producer[target], -1, -1):
            op, inputs, outputs = self.steps[index]
            live = [o for o in outputs if o in acc]
            if not live:
                continue
            if live != [outputs[0]]:
                raise UnsupportedOperator(op.onnx_name, op.op_type, "a second output feeds the bounded graph")
            coef = acc.pop(outputs[0])
            rule = op.relaxation
            vary = [i for i, n in enumerate(inputs) if n in self.varying]
            pos, neg = coef.clamp(min=0), coef.clamp(max=0)
            if rule.elementwise:
                if record is not None:
                    record[index] = coef.detach()
                theta = None if thetas is None else thetas.get(index)
                sl, bl, su, bu = rule.slopes(op, self._args(inputs, self.bounds), theta)
                bias = bias + _dot(pos, bl) + _dot(neg, bu)
                parts = [pos * sl + neg * su]
                if betas is not None and index in betas:
                    parts[0] = parts[0] - betas[index] * self.splits[inputs[0]]
            else:
                vjp_l, off_l, vjp_u, off_u = self._affine(index)
                if vjp_u is None:
                    bias = bias + _dot(coef, off_l)
                    parts = list(vjp_l(coef))
                else:
                    bias = bias + _dot(pos, off_l) + _dot(neg, off_u)
                    parts = [p + q for p, q in zip(vjp_l(pos), vjp_u(neg))]
            for i, part in zip(vary, parts):
                name = inputs[i]
                acc[name] = acc[name] + part if name in acc else part
        coef_in = acc.pop(self.input_name, None)
        if coef_in is None:
            coef_in = torch.zeros((*a.shape[:2], *self.region.lower.shape[1:]), dtype=a.dtype, device=a.device)
        return coef_in, bias

    def linear_lower(self, target: str, a: torch.Tensor, thetas: dict | None = None, betas: dict | None = None
                     ) -> torch.Tensor:
        """CROWN lower bound of ``a . target`` over the region, (S, N), before the rounding widening."""
        coef_in, bias = self.backward(target, a, thetas, betas)
        return self.region.minimum(coef_in) + bias

    # --- specifications on the output ----------------------------------------------------------------------
    def _rounding_of(self, target: str, c: torch.Tensor) -> torch.Tensor:
        """The outward rounding margin of a bound on ``c . target`` (see the module docstring)."""
        return self.rounding * _dot(c.abs(), self.magnitude[target])

    def _spec_rounding(self, c: torch.Tensor) -> torch.Tensor:
        return self._rounding_of(self.output_name, c)

    def interval_lower(self, c: torch.Tensor) -> torch.Tensor:
        """IBP lower bound of ``c . y`` (c: (S, N, *output)) from the output's box, widened: (S, N)."""
        box = self.bounds[self.output_name]
        return _dot(c.clamp(min=0), box.lo) + _dot(c.clamp(max=0), box.hi) - self._spec_rounding(c)

    def lower(self, c: torch.Tensor, alpha_steps: int | None = None, lr: float | None = None, stop=None,
              warm: dict | None = None, keep: dict | None = None) -> torch.Tensor:
        """Sound lower bound of ``c . y`` for every spec row and sample: (S, N).

        IBP for an ``"ibp"`` propagation; CROWN otherwise, intersected with IBP; with ``alpha_steps`` > 0 the
        best bound over that many alpha-CROWN iterations (each iterate sound), started from ``warm`` and its last
        parameters left in ``keep`` (see :meth:`_optimised`).
        """
        c = c.to(self.region.lower.device, torch.float64)
        alpha_steps = self.alpha_steps if alpha_steps is None else alpha_steps
        lr = self.lr if lr is None else lr
        best = self.interval_lower(c)
        if self.method == "ibp":
            return best
        with torch.no_grad():
            if warm:  # the warm start's own bound replaces plain CROWN's
                thetas, betas = self._parameters(self.output_name, c, warm)
                first = self.linear_lower(self.output_name, c, thetas, betas)
                if keep is not None:
                    keep.update(theta=thetas, beta=betas)
            else:
                first = torch.cat([self.linear_lower(self.output_name, part) for part in c.split(self._chunk_rows(1))])
        best = torch.maximum(best, first - self._spec_rounding(c))
        if alpha_steps > 0 and not (stop is not None and stop(best)):
            best = torch.maximum(best, self._optimised(self.output_name, c, alpha_steps, lr, stop, warm, keep))
        return best

    def _parameters(self, target: str, c: torch.Tensor, warm: dict | None = None) -> tuple[dict, dict]:
        """Initial alpha-CROWN slope parameters (S, N, *shape) per Relu-like step ``target`` depends on, and on the
        output of a split propagation the split multipliers: from ``warm`` (``{"theta": {step: ...}, "beta":
        ...}``, e.g. a parent subdomain's optimised ones; any theta in [0, 1] and beta >= 0 is sound) where it has
        them, else CROWN's slopes and zero multipliers."""
        warm = warm or {}
        thetas, betas = {}, {}
        for index in sorted(self._ancestors(target)):
            op, inputs, _ = self.steps[index]
            if getattr(op.relaxation, "optimisable", False):
                box = self.bounds[inputs[0]]
                init = op.relaxation.default_theta(box.lo, box.hi).expand(c.shape[0], *box.lo.shape)
                if index in warm.get("theta", {}):
                    init = warm["theta"][index].to(init).clamp(0.0, 1.0)
                thetas[index] = init.clone()
                if target == self.output_name and inputs[0] in self.splits:
                    given = warm.get("beta", {}).get(index)
                    betas[index] = torch.zeros_like(init) if given is None else given.to(init).clamp(min=0.0)
        return thetas, betas

    def _optimised(self, target: str, c: torch.Tensor, steps: int, lr: float, stop=None, warm: dict | None = None,
                   keep: dict | None = None) -> torch.Tensor:
        """alpha-CROWN on ``c . target``: Adam on the lower-line slopes of the Relu-like neurons it depends on (and,
        on the output of a split propagation, on the split multipliers beta: beta-CROWN), the best (widened)
        iterate per row. ``stop(best)`` True ends the optimisation early. ``warm`` gives starting parameters
        (:meth:`_parameters`); ``keep``, when given, receives the last ones (``"theta"``, ``"beta"``)."""
        thetas, betas = self._parameters(target, c, warm)
        best = torch.full(c.shape[:2], -math.inf, dtype=torch.float64, device=c.device)
        if not thetas:
            return best
        for t in [*thetas.values(), *betas.values()]:
            t.requires_grad_(True)
        optimiser = torch.optim.Adam([*thetas.values(), *betas.values()], lr=lr)
        saved = {"theta": {i: t.detach().clone() for i, t in thetas.items()},
                 "beta": {i: b.detach().clone() for i, b in betas.items()}}
        try:
            for _ in range(steps):
                self._tick()
                if target != self.output_name and self.alpha_until is not None and time.monotonic() > self.alpha_until:
                    break  # intermediate bounds keep their best iterate so far
                low = self.linear_lower(target, c, thetas, betas) - self._rounding_of(target, c)
                best = self._improve(best, low.detach(), thetas, betas, saved)
                if stop is not None and stop(best):
                    return best
                optimiser.zero_grad()
                (-low.sum()).backward()
                optimiser.step()
                with torch.no_grad():
                    for t in thetas.values():
                        t.clamp_(0.0, 1.0)
                    for b in betas.values():
                        b.clamp_(min=0.0)
            with torch.no_grad():
                low = self.linear_lower(target, c, thetas, betas) - self._rounding_of(target, c)
            return self._improve(best, low, thetas, betas, saved)
        finally:
            if keep is not None:
                keep.update(saved)

    @staticmethod
    def _improve(best: torch.Tensor, low: torch.Tensor, thetas: dict, betas: dict, saved: dict) -> torch.Tensor:
        """The larger bound per (row, sample), and in ``saved`` the parameters that reached it: a warm start from
        the best iterate, not the last (Adam's last step may have made it worse)."""
        better = low > best
        with torch.no_grad():
            for key, params in (("theta", thetas), ("beta", betas)):
                for i, t in params.items():
                    mask = better.reshape(*better.shape, *[1] * (t.dim() - 2))
                    saved[key][i] = torch.where(mask, t.detach(), saved[key][i])
        return torch.maximum(best, low)

    def _ancestors(self, name: str) -> set[int]:
        found, todo = set(), [name]
        while todo:
            n = todo.pop()
            index = self.producer.get(n)
            if index is None or index in found:
                continue
            found.add(index)
            todo.extend(i for i in self.steps[index][1] if i in self.varying)
        return found
