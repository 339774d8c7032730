"""Deciding a VNN-LIB property on an ONNX model: ``holds``, ``violated`` (with a confirmed counterexample) or
``unknown`` within a time budget.

Order, as the leading verifiers do: a short attack first (cheap counterexamples), then bounds over each input box
(a disjunct ``C y <= d`` is infeasible where some row's lower bound of ``C y - d`` exceeds ``margin``), then, for
low-dimensional inputs, input splitting (:mod:`certify.input_split`: batched bisection) with bounds on every
sub-box and the sub-box centres checked as candidates; for high-dimensional inputs of a network with Relu-like
units, branch and bound over their signs (:mod:`certify.local.bab`, beta-CROWN) for ``BAB_SHARE`` of the time
left, its subdomains' minimising vertices checked as candidates, then the attack resumes for the rest (a short
while: on a property that holds it is lost, and it rarely finds what the first round and the search missed); any other
network goes straight back to the attack. Every bound call stops at the deadline (``BoundTimeout``).

The bound step is one pluggable function, ``bounds(lower, upper, C) -> (N, S)`` lower bounds of ``C y`` over N
boxes. By default it is the project's bound propagation (``certify.local``: CROWN, alpha-CROWN on single boxes)
(:class:`Engine`); without one no property can be proved and the answer is ``violated`` or ``unknown``.
Bounds hold for the exact function the weights define; the default bound step then subtracts, per box and row k,
the smaller of two sound bounds on the float32 error of ``C_k y`` over the box: ``|C_k| . e`` with ``e`` the
elementwise forward error bound of :mod:`certify.local.float_error` (from the box's own intermediate bounds), and
``||C_k||_2 (a + b r)`` from the global analysis of :mod:`certify.lipschitz.rounding` (``r`` the box's half
diagonal), so a proof covers the network as it runs in float32. ``margin`` is a further
safety allowance on top.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.errors import ModelRejected
from certify.falsify import Checker, Counterexample, attack_case
from certify.input_split import Bounded, Boxes, CrownSteps, split_search
from certify.local.bounds import BoundTimeout
from certify.vnnlib import Case, Property, check_sizes

BoundFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
SPLIT_MAX_INPUTS = 16  # input splitting only pays off for low-dimensional inputs (ACAS Xu has 5)
DEFAULT_MARGIN = 1e-5
QUICK_RESTARTS = 8  # starts per disjunct of the first, short attack round (a round must fit its 20% share)
BAB_SHARE = 0.9  # of the time left after the bounds: Relu branch and bound; then the attack resumes briefly


@dataclass
class Verdict:
    result: str  # "holds", "violated" or "unknown"
    method: str  # what decided it; for unknown, what was tried ("attack+bab")
    seconds: float
    counterexample: Counterexample | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"result": self.result, "method": self.method, "seconds": round(self.seconds, 3),
               "reason": self.reason, "stats": self.stats}
        if self.counterexample is not None:
            ce = self.counterexample
            out["counterexample"] = {"case": ce.case, "disjunct": ce.disjunct, "x": [float(v) for v in ce.x],
                                     "y": [float(v) for v in ce.y]}
        return out


def vnncomp_result(verdict: Verdict) -> str:
    """The competition's result file: ``sat`` with the assignment, ``unsat``, or ``unknown``."""
    if verdict.result == "holds":
        return "unsat\n"
    if verdict.result != "violated":
        return "unknown\n"
    ce = verdict.counterexample
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(ce.x)] + [f"(Y_{j} {float(v)!r})" for j, v in
                                                                      enumerate(ce.y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


class Engine:
    """The project's bound propagation on one model: :meth:`bounds` is a :data:`BoundFn` (CROWN; alpha-CROWN
    for a single box), :meth:`branch_and_bound` the Relu-split search of :mod:`certify.local.bab` (None on a
    network without Relu-like units)."""

    def __init__(self, graph, input_shape: tuple[int, ...], alpha_steps: int = 20):
        from certify.local.bab import ReluSearch
        from certify.local.bounds import float64_graph

        self.shape, self.alpha_steps = tuple(input_shape), alpha_steps
        self.g64 = float64_graph(graph)
        self.float_error = _float_error(graph, self.shape)
        search = ReluSearch(self.g64, self.shape)
        self.search = search if search.applicable else None
        self._warm_up()

    def _warm_up(self) -> None:
        """One small propagation at load time: torch.func's first use costs seconds, which would otherwise eat
        the first property's time budget."""
        point = np.zeros((1, int(np.prod(self.shape))))
        with torch.no_grad():
            outputs = int(self.g64(torch.as_tensor(point).reshape(1, *self.shape)).numel())
        prop, c = self._propagation(point, point, np.ones((1, outputs)))
        prop.lower(c, alpha_steps=1)

    def _propagation(self, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, deadline: float | None = None):
        from certify.local.bounds import Propagation
        from certify.local.region import Region

        n = lower.shape[0]
        region = Region.box(torch.as_tensor(lower).reshape(n, *self.shape),
                            torch.as_tensor(upper).reshape(n, *self.shape))
        prop = Propagation(self.g64, region, "crown", deadline=deadline)
        out_shape = prop.bounds[prop.output_name].lo.shape[1:]
        c = torch.as_tensor(C, dtype=torch.float64).reshape(C.shape[0], 1, *out_shape).expand(-1, n, *out_shape)
        return prop, c

    def bounds(self, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, deadline: float | None = None
               ) -> np.ndarray:
        prop, c = self._propagation(lower, upper, C, deadline)
        steps = self.alpha_steps if lower.shape[0] == 1 else 0
        exact = prop.lower(c, alpha_steps=steps).detach().T.numpy()
        return exact - _allowance(prop, c, self.float_error(lower, upper), C)

    def split_steps(self, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray, groups: list,
                    margin: float, deadline: float, gradients):
        """The batched bound step of input splitting (:class:`certify.input_split.CrownSteps`) and the root
        box's float32 allowance per row (1, S); a box's own allowance uses the root's global error bound (it
        covers every sub-box) beside the box's forward error analysis."""
        prop, c = self._propagation(lower, upper, C, deadline)
        global_error = self.float_error(lower, upper)
        allowance = lambda p, cc: _allowance(p, cc, global_error, C)  # noqa: E731
        step = CrownSteps(self.g64, self.shape, C, d, groups, margin, allowance, gradients)
        return step, allowance(prop, c)

    def branch_and_bound(self, case: Case, margin: float, deadline: float, candidate):
        """Branch and bound on ``case`` (:class:`certify.local.bab.Outcome`); every row's float32 allowance is
        the one of the whole box (it covers every subdomain). A deadline passed before the search starts (in the
        root propagation or its allowance) is an outcome of its own, ``timeout``, not an escaping error."""
        from certify.local.bab import Outcome, Spec

        C, d, groups = _rows(case)
        lower, upper = case.lower[None], case.upper[None]
        try:
            prop, c = self._propagation(lower, upper, C, deadline)
            error = _allowance(prop, c, self.float_error(lower, upper), C)[0]
        except BoundTimeout:
            return Outcome("timeout")
        return self.search.run(case.lower, case.upper, Spec(C, d, groups, error), margin, deadline, candidate)


def engine(graph, input_shape: tuple[int, ...]) -> Engine | None:
    """The bound engine for ``graph``, or None when bound propagation does not cover one of its operators."""
    from certify.local.bounds import check_supported
    from certify.local.rules import UnsupportedOperator

    try:
        check_supported(graph)
    except UnsupportedOperator:
        return None
    return Engine(graph, input_shape)


def engine_bounds(graph, input_shape: tuple[int, ...]) -> BoundFn | None:
    """:meth:`Engine.bounds` of the model's engine, or None when there is none."""
    found = engine(graph, input_shape)
    return None if found is None else found.bounds


def _allowance(prop, c: torch.Tensor, global_error: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(N, S): the float32 error allowance of each row ``C_k y`` over each box of ``prop``: the smaller of the
    global bound ``global_error * ||C_k||_2`` and the local forward error analysis (where it applies)."""
    from certify.local.float_error import forward_errors
    from certify.local.rules import UnsupportedOperator

    error = global_error[:, None] * np.linalg.norm(C.reshape(C.shape[0], -1), axis=1)[None]
    try:
        local = forward_errors(prop).spec(c).T.numpy()
        with np.errstate(invalid="ignore"):
            error = np.fmin(error, np.where(np.isfinite(local), local, np.inf))
    except UnsupportedOperator:
        pass  # the global bound alone (infinite where the network has none: nothing is proved)
    return error


def _float_error(graph, input_shape: tuple[int, ...]):
    """``(lower, upper) -> (N,)``: a bound on the L2 norm of the float logits' error anywhere in each box (the
    forward error analysis of :mod:`certify.lipschitz.rounding` at the box centre, radius the half diagonal).
    Infinite when the network has no global L2 bound (then nothing is proved: sound)."""
    from certify.lipschitz import rounding
    from certify.lipschitz.network import analyse

    analysis = analyse(graph, tuple(input_shape), norm="l2")

    def error(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        mid = (lower + upper) / 2
        centre = torch.as_tensor(mid, dtype=graph.input_dtype()).reshape(-1, *input_shape)
        moved = centre.double().reshape(lower.shape[0], -1).numpy() - mid.reshape(lower.shape[0], -1)
        radius = (np.linalg.norm((upper - lower).reshape(lower.shape[0], -1), axis=1) / 2
                  + np.linalg.norm(moved, axis=1))  # the ball around the rounded centre still covers the box
        ab = rounding.logit_errors(graph, analysis, centre)
        with np.errstate(invalid="ignore"):
            out = ab[:, 0] + ab[:, 1] * radius
        return np.where(np.isfinite(out), out, np.inf)

    return error


def _rows(case: Case) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """All rows of all disjuncts stacked (C, d), and each disjunct's row indices."""
    C = np.concatenate([c.C for c in case.unsafe])
    d = np.concatenate([c.d for c in case.unsafe])
    starts = np.cumsum([0] + [len(c.d) for c in case.unsafe])
    return C, d, [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]


def proved(bounds: BoundFn, case: Case, lower: np.ndarray, upper: np.ndarray, margin: float) -> np.ndarray:
    """Per box (N), whether every disjunct is infeasible: some row's lower bound of ``C y - d`` > ``margin``.

    A disjunct without rows (every output unsafe) is never infeasible.
    """
    C, d, groups = _rows(case)
    if C.shape[0] == 0:
        return np.zeros(lower.shape[0], dtype=bool)
    gap = bounds(lower, upper, C) - d  # (N, S)
    done = np.ones(lower.shape[0], dtype=bool)
    for rows in groups:
        done &= (gap[:, rows] > margin).any(axis=1) if rows.size else False
    return done


class Decider:
    """One model (converted torch module, onnxruntime checker, bound function) deciding properties."""

    def __init__(self, graph, checker: Checker, input_shape: tuple[int, ...], bounds: BoundFn | None,
                 margin: float = DEFAULT_MARGIN, seed: int = 0, engine: Engine | None = None,
                 n_outputs: int | None = None):
        self.graph, self.checker, self.shape = graph, checker, tuple(input_shape)
        self.bounds, self.margin, self.seed = bounds, margin, seed
        self.engine, self.n_outputs = engine, n_outputs

    def check_fits(self, prop: Property) -> None:
        """Refuse a property whose input or output count differs from the model's (``property_mismatch``)."""
        check_sizes(prop.n_inputs, prop.n_outputs, int(np.prod(self.shape)), self.n_outputs)

    def _timed(self, deadline: float) -> BoundFn:
        """The bound step, interrupted at ``deadline`` where the engine allows it."""
        if self.engine is not None and self.bounds == self.engine.bounds:
            return functools.partial(self.engine.bounds, deadline=deadline)
        return self.bounds

    def decide(self, prop: Property, timeout: float) -> Verdict:
        start = time.monotonic()
        deadline = start + timeout
        elapsed = lambda: time.monotonic() - start  # noqa: E731
        if not prop.cases:
            return Verdict("holds", "vacuous", elapsed(), reason="no input satisfies the input constraints")
        quick = start + 0.2 * timeout
        for i, case in enumerate(prop.cases):
            found = attack_case(self.graph, self.checker, case, i, input_shape=self.shape, rounds=1,
                                deadline=quick, seed=self.seed, restarts=QUICK_RESTARTS)
            if found is not None:
                return Verdict("violated", "attack", elapsed(), found)
        open_cases = list(range(len(prop.cases)))
        stats = {"boxes": 0, "proved": 0}
        methods = set()
        if self.bounds is not None:
            try:
                open_cases = [i for i in open_cases if not self._bounded(prop.cases[i], deadline)]
            except BoundTimeout:
                return Verdict("unknown", "bounds", elapsed(), reason="time budget spent")
            if not open_cases:
                return Verdict("holds", "bounds", elapsed())
        for i in open_cases:
            case = prop.cases[i]
            if self.bounds is not None and case.lower.size <= SPLIT_MAX_INPUTS:
                methods.add("input-split")
                outcome = self._split(case, i, deadline, stats)
                if isinstance(outcome, Counterexample):
                    return Verdict("violated", "input-split", elapsed(), outcome, stats=stats)
                if outcome:
                    continue
                return Verdict("unknown", "input-split", elapsed(), reason="time budget spent", stats=stats)
            if self._branchable(case):
                methods.add("bab")
                began = time.monotonic()
                share = began + BAB_SHARE * (deadline - began)  # the attack gets the rest
                outcome = self.engine.branch_and_bound(case, self.margin, share,
                                                       lambda xs, c=case, k=i: self._check_points(c, k, xs))
                stats["domains"] = stats.get("domains", 0) + outcome.domains
                stats["bab_s"] = round(stats.get("bab_s", 0.0) + time.monotonic() - began, 2)
                stats["proved"] += outcome.proved
                if outcome.result == "found":
                    return Verdict("violated", "bab", elapsed(), outcome.found, stats=stats)
                if outcome.result == "holds":
                    continue
                stats["bab"] = outcome.result
            found = attack_case(self.graph, self.checker, case, i, input_shape=self.shape, deadline=deadline,
                                seed=self.seed + 1)
            if found is not None:
                return Verdict("violated", "attack", elapsed(), found)
            reason = "no bound engine available" if self.bounds is None else "not proved by bounds; no counterexample"
            return Verdict("unknown", "+".join(sorted(methods | {"attack"})), elapsed(), reason=reason, stats=stats)
        return Verdict("holds", "+".join(sorted(methods)) or "bounds", elapsed(), stats=stats)

    def _branchable(self, case: Case) -> bool:
        """Relu branch and bound applies: an engine with Relu-like units, and every disjunct has rows."""
        return (self.engine is not None and self.engine.search is not None and self.bounds == self.engine.bounds
                and all(len(c.d) for c in case.unsafe))

    def _bounded(self, case: Case, deadline: float) -> bool:
        if time.monotonic() > deadline:
            return False
        return bool(proved(self._timed(deadline), case, case.lower[None], case.upper[None], self.margin)[0])

    def _split(self, case: Case, index: int, deadline: float, stats: dict):
        """Input splitting (:func:`certify.input_split.split_search`): True when every sub-box is proved, a
        confirmed counterexample among the sub-box centres, or False when time runs out; ``stats`` counts the
        boxes bounded and proved. With the bound engine, boxes get its batched cheap-then-strong steps; with any
        other bound function, its bounds and the gradient smear at the centre."""
        C, d, groups = _rows(case)
        check = lambda lo, hi: self._check_centres(case, index, lo, hi)  # noqa: E731
        lower, upper = case.lower[None].copy(), case.upper[None].copy()
        try:
            if self.engine is None or self.bounds != self.engine.bounds:
                root = Boxes(lower, upper, np.zeros((1, len(d))), {})
                return split_search(self._generic_step(C, d), root, groups, self.margin, deadline, check, stats)
            step, allowance = self.engine.split_steps(lower, upper, C, d, groups, self.margin, deadline,
                                                      lambda lo, hi: self._gradients(C, lo, hi))
            return split_search(step, Boxes(lower, upper, allowance, {}), groups, self.margin, deadline, check, stats)
        except BoundTimeout:
            return False

    def _generic_step(self, C: np.ndarray, d: np.ndarray):
        """The split step of a plain bound function: its bounds, and the gradient smear at each centre."""
        def step(boxes, deadline):
            scores = self._gradients(C, boxes.lower, boxes.upper) * (boxes.upper - boxes.lower)
            return Bounded(self.bounds(boxes.lower, boxes.upper, C) - d, scores, boxes.allowance, {})

        return step

    def _gradients(self, C: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(N, n): the absolute gradients of the rows ``C y``, summed, at each box's centre."""
        rows = torch.as_tensor(C, dtype=torch.float32)
        x = torch.as_tensor((lo + hi) / 2, dtype=torch.float32).requires_grad_(True)
        with torch.enable_grad():
            y = self.graph(x.reshape(len(x), *self.shape)).flatten(1) @ rows.T
            score = torch.zeros_like(x)
            for r in range(y.shape[1]):
                (g,) = torch.autograd.grad(y[:, r].sum(), x, retain_graph=r + 1 < y.shape[1])
                score += g.abs()
        return score.numpy()

    def _check_centres(self, case: Case, index: int, lo: np.ndarray, hi: np.ndarray) -> Counterexample | None:
        """The sub-box centres that torch puts in the unsafe set, confirmed in onnxruntime."""
        return self._check_points(case, index, (lo + hi) / 2)

    def _check_points(self, case: Case, index: int, points: np.ndarray, limit: int = 8) -> Counterexample | None:
        """The (at most ``limit``) points (K, n) that torch puts in the unsafe set, confirmed in onnxruntime."""
        with torch.no_grad():
            y = self.graph(torch.as_tensor(points, dtype=torch.float32).reshape(len(points), *self.shape))
        y = y.flatten(1).double().numpy()
        C, d, groups = _rows(case)
        gap = y @ C.T - d
        for i in np.flatnonzero([any((gap[j, rows] <= 1e-6).all() for rows in groups) for j in range(len(y))])[:limit]:
            found = self.checker.confirm(case, index, points[i])
            if found is not None:
                return found
        return None


def load_decider(model_path, prop: Property | None = None, *, use_bounds: bool = True, seed: int = 0) -> Decider:
    """Load and convert the model and build its :class:`Decider`, which then decides any property that fits it.
    With ``prop``, a property that does not fit is refused before the conversion where the input count tells."""
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.verify import input_specs, onnxruntime_session

    model = load_onnx(model_path)
    specs = input_specs(model)
    if len(specs) != 1:
        raise ModelRejected("property_mismatch", f"the model has {len(specs)} inputs; VNN-LIB properties need one")
    name, shape, elem = specs[0]
    if elem not in (1, 11):  # float, double
        raise ModelRejected("property_mismatch", "the model's input is not a floating-point tensor")
    if prop is not None:
        check_sizes(prop.n_inputs, prop.n_outputs, int(np.prod(shape[1:])), None)
    graph = to_torch(model)
    checker = Checker(onnxruntime_session(model, threads=1), name, (1, *shape[1:]))
    with torch.no_grad():
        out = graph(torch.zeros((1, *shape[1:]), dtype=torch.float32))
    decider = Decider(graph, checker, tuple(shape[1:]), None, seed=seed, n_outputs=int(out.numel()))
    if prop is not None:
        decider.check_fits(prop)
    found = engine(graph, tuple(shape[1:])) if use_bounds else None
    if found is not None:
        decider.bounds, decider.engine = found.bounds, found
    return decider
