"""Branch and bound over Relu splits: complete verification of a linear specification over one input box.

A subdomain fixes the sign of some Relu-like pre-activations (+1 active, -1 inactive). Each is bounded by
:class:`~certify.local.bounds.Propagation` with its ``splits`` (the split neurons' relaxations become their exact
linear pieces, and alpha-CROWN also optimises the split multipliers: beta-CROWN, Wang et al. 2021) and with its
parent's boxes as ``prior`` (a child's boxes are never wider). Many subdomains are bounded as one batch, each
warm-started from the slopes and multipliers its parent ended with (any start is sound; a good one saves steps).
The root gets optimised intermediate bounds (alpha-CROWN per intermediate neuron, Xu et al. 2021; a few steps per
layer, so that every layer gets them within the time cap) and more output steps.

The specification is a disjunction of groups of rows ``C y - d``; a subdomain is done when, for every group, some
row's lower bound minus the row's float32 error allowance exceeds ``margin``, or when its boxes are empty (no input
has that sign pattern). After the root, every group still open is searched on its own rows (each must be refuted,
and a split that helps one group need not help another), the hardest first. The allowance is the whole box's; a
subdomain that only the allowance keeps open gets its own (the forward error analysis over its boxes, started
from the root's), and its children inherit it (an error bound over a parent's boxes holds on every part), as they
inherit the parent's row bounds (a child's bound is the larger of its own and its parent's). The warm start a
subdomain passes on is the best iterate of its optimisation, not the last. Every open subdomain is split in two
(in 2**k on k neurons while the open subdomains are too few to fill a batch) on the neuron
:func:`certify.local.branching.choose` picks (an intercept score in the spirit of BaBSR, optionally
filtered by bounding the top candidates' children). The linear bound's minimising vertex of each open
subdomain is offered to ``candidate`` (which confirms counterexamples), and a subdomain with no unstable neuron
left is a leaf: the network is affine on it, and its linear programs (:mod:`certify.local.leaf_lp`) bound it
exactly (their minimisers are candidates too); one they leave open gets a longer beta optimisation, and one still
open ends the search (``stuck``).

The search stops at ``deadline`` (checked between batches and inside every propagation), when the open
subdomains would exceed ``max_bytes`` of stored boxes, or when a candidate is confirmed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from certify.local.bounds import BoundTimeout, Propagation, varying_names
from certify.local.branching import TOP_K, choose
from certify.local.float_error import forward_errors
from certify.local.leaf_lp import close_leaves
from certify.local.region import Region
from certify.local.rules import Interval, UnsupportedOperator

MAX_BATCH = 1024  # parents split per batch (twice as many children bounded)
BATCH_ELEMENTS = 2**23  # children x rows x widest tensor per batch (bounds the backward coefficients' memory)
DEFAULT_ALPHA_STEPS = 8  # per child, warm-started from its parent's parameters
ROOT_ALPHA_STEPS, ROOT_INTERMEDIATE_STEPS = 30, 4  # the root: the output's and every intermediate bound's slopes
ROOT_INTERMEDIATE_SHARE = 0.5  # of the time left: the most the root's intermediate optimisation may take
DEFAULT_MAX_BYTES = 2**30
LEAF_STEPS, LEAF_LR = 200, 0.5  # beta optimisation of a subdomain with every neuron split
MAX_SPLIT_DEPTH = 4  # the most neurons a subdomain is split on at once (2**depth children) when the frontier is small


@dataclass
class Spec:
    """Rows ``C y - d`` (S rows), the disjunct groups (row indices) and each row's float32 error allowance."""

    C: np.ndarray
    d: np.ndarray
    groups: list[np.ndarray]
    error: np.ndarray

    def subset(self, rows: np.ndarray) -> Spec:
        """The specification of one group of rows (a single disjunct)."""
        return Spec(self.C[rows], self.d[rows], [np.arange(len(rows))], self.error[rows])


@dataclass
class Outcome:
    result: str  # "holds", "found", "stuck", "timeout", "memory"
    found: object = None
    domains: int = 0
    proved: int = 0


@dataclass
class Domains:
    """A stack of subdomains: split signs and prior boxes per split tensor, (M, *shape) each, and the warm start of
    their bounds: the alpha-CROWN slopes and split multipliers their parent ended with, (M, S, *shape) per step."""

    splits: dict[str, torch.Tensor]
    lo: dict[str, torch.Tensor]
    hi: dict[str, torch.Tensor]
    theta: dict[int, torch.Tensor]
    beta: dict[int, torch.Tensor]
    branch: torch.Tensor  # (M, D) flat indices of the neurons each is split on next, in order (-1: none left)
    worst: torch.Tensor  # (M,) the bound gap that is furthest from done (lower = harder)
    low: torch.Tensor  # (M, S) each row's lower bound (before allowances): it holds on every child too
    allow: torch.Tensor  # (M, S) each row's float32 error allowance over the subdomain (covers every child too)

    FIELDS = ("splits", "lo", "hi", "theta", "beta")
    TENSORS = ("branch", "worst", "low", "allow")

    def __len__(self) -> int:
        return int(self.branch.shape[0])

    def take(self, index) -> Domains:
        pick = {k: {n: t[index] for n, t in getattr(self, k).items()} for k in self.FIELDS}
        return Domains(**pick, **{k: getattr(self, k)[index] for k in self.TENSORS})

    def rows(self, rows: np.ndarray) -> Domains:
        """The same subdomains with the warm start of some specification rows only."""
        index = torch.as_tensor(rows)
        return Domains(self.splits, self.lo, self.hi, {i: t[:, index] for i, t in self.theta.items()},
                       {i: t[:, index] for i, t in self.beta.items()}, self.branch, self.worst, self.low[:, index],
                       self.allow[:, index])

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        first = parts[0]
        join = {k: {n: torch.cat([getattr(p, k)[n] for p in parts]) for n in getattr(first, k)
                    if all(n in getattr(p, k) for p in parts)} for k in Domains.FIELDS}  # a warm start may lack a step
        return Domains(**join, **{k: torch.cat([getattr(p, k) for p in parts]) for k in Domains.TENSORS})


def split_steps(graph) -> list[tuple[int, str]]:
    """(step index, pre-activation tensor) of every Relu-like step that varies with the input (not the graph's
    input itself, whose box is the region's), each tensor once."""
    varying = varying_names(graph) - set(graph.input_names)
    found, seen = [], set()
    for i, (op, inputs, _) in enumerate(graph.steps()):
        rule = getattr(type(op), "relaxation", None)
        if getattr(rule, "optimisable", False) and inputs[0] in varying and inputs[0] not in seen:
            seen.add(inputs[0])
            found.append((i, inputs[0]))
    return found


def split_depth(parents: int, width: int) -> int:
    """How many neurons to split each of ``parents`` subdomains on so that their children fill a batch of ``width``
    (at least one, at most ``MAX_SPLIT_DEPTH``)."""
    return int(np.clip(np.floor(np.log2(max(width, 2) / max(parents, 1))), 1, MAX_SPLIT_DEPTH))


class ReluSearch:
    """Branch and bound for one float64 graph (:func:`~certify.local.bounds.float64_graph`).

    ``refine``: a child's intermediate boxes after the layer of its new split are bounded by CROWN again (with the
    split), not only kept from the parent."""

    def __init__(self, graph, input_shape: tuple[int, ...], alpha_steps: int = DEFAULT_ALPHA_STEPS,
                 max_bytes: int = DEFAULT_MAX_BYTES, refine: bool = False, top_k: int = TOP_K):
        self.graph, self.shape, self.refine, self.top_k = graph, tuple(input_shape), refine, top_k
        self.alpha_steps, self.max_bytes = alpha_steps, max_bytes
        self.steps = split_steps(graph)
        self.names = [name for _, name in self.steps]

    @property
    def applicable(self) -> bool:
        return bool(self.steps)

    def run(self, lower: np.ndarray, upper: np.ndarray, spec: Spec, margin: float, deadline: float,
            candidate: Callable[[np.ndarray], object | None]) -> Outcome:
        outcome = Outcome("timeout")
        try:
            self._search(lower, upper, spec, margin, deadline, candidate, outcome)
        except BoundTimeout:
            outcome.result = "timeout"
        return outcome

    def _search(self, lower, upper, spec, margin, deadline, candidate, outcome) -> None:
        """The root with every row; then each disjunct still open on its own rows (every one must be refuted, and
        a split that helps one need not help another), starting from the root's boxes and slopes."""
        root = self._bound(lower, upper, spec, margin, None, deadline, candidate, outcome)
        if outcome.result != "timeout":
            return
        if root is None:
            outcome.result = "holds"
            return
        starts = []
        for rows in spec.groups:
            part = spec.subset(rows)
            first = self._bound(lower, upper, part, margin, root.rows(rows), deadline, candidate, outcome, steps=0)
            if outcome.result != "timeout":
                return
            if first is not None:
                starts.append((float(first.worst.min()), part, first))
        for _, part, first in sorted(starts, key=lambda t: t[0]):  # the hardest first: most likely violated
            self._loop(lower, upper, part, margin, first, deadline, candidate, outcome)
            if outcome.result != "holds":
                return

    def _loop(self, lower, upper, spec, margin, first: Domains, deadline, candidate, outcome) -> None:
        """Split the hardest open subdomains, a growing batch of children at a time (at most a quarter of the time
        left each), until none is open. While the open subdomains are too few to fill the batch, each is split on
        several neurons at once (:func:`split_depth`): per-batch overhead, not arithmetic, dominates small batches
        on a CPU, and early in a search few children close anyway."""
        todo = [first]
        width = 16  # children per batch
        outcome.result = "timeout"
        while todo:
            if time.monotonic() > deadline:
                return
            pending = Domains.cat(todo)
            if self._bytes(pending) > self.max_bytes:
                outcome.result = "memory"
                return
            order = torch.argsort(pending.worst)
            parents, rest = pending.take(order[:max(1, width // 2)]), pending.take(order[max(1, width // 2):])
            todo = [rest] if len(rest) else []
            now = time.monotonic()
            children = self._children(parents, split_depth(len(parents), width))
            bounded = self._bound(lower, upper, spec, margin, children, deadline, candidate, outcome)
            if outcome.result != "timeout":
                return
            spent, left = time.monotonic() - now, deadline - time.monotonic()
            width = int(np.clip(len(children) * min(2.0, 0.25 * left / max(spent, 1e-3)), 2,
                                2 * self._max_batch(spec)))
            if bounded is not None:
                todo.append(bounded)
        outcome.result = "holds"

    def _max_batch(self, spec: Spec) -> int:
        widest = max(int(np.prod(self.shape)), *(t.numel() for t in self._sizes.values()))
        return int(np.clip(BATCH_ELEMENTS // (2 * spec.C.shape[0] * widest), 1, MAX_BATCH))

    def _bytes(self, domains: Domains) -> int:
        return sum(t.numel() * t.element_size() for k in Domains.FIELDS for t in getattr(domains, k).values())

    def _children(self, parents: Domains, depth: int = 1) -> Domains:
        """The children of splitting each parent on its first ``depth`` branch neurons, each active (+1) and
        inactive (-1): up to ``2**depth`` per parent (a parent with fewer neurons left to split has fewer)."""
        out = parents
        for level in range(min(depth, parents.branch.shape[1])):
            ready = out.branch[:, level] >= 0
            if level and not bool(ready.any()):
                break
            out = Domains.cat([self._split_on(out.take(ready), level), *([out.take(~ready)] if (~ready).any() else [])])
        return out

    def _split_on(self, parents: Domains, level: int) -> Domains:
        """Two children per parent: its branch neuron ``level`` split active (+1) and inactive (-1)."""
        both = Domains.cat([parents, parents])
        m = len(parents)
        sign = torch.cat([torch.ones(m), -torch.ones(m)]).to(torch.int8)
        offset = 0
        splits = {}
        for name in self.names:
            t = both.splits[name].flatten(1).clone()
            size = t.shape[1]
            local = both.branch[:, level] - offset
            mine = (local >= 0) & (local < size)
            rows = mine.nonzero().flatten()
            t[rows, local[rows]] = sign[rows]
            splits[name] = t.reshape(both.splits[name].shape)
            offset += size
        return Domains(splits, both.lo, both.hi, both.theta, both.beta, both.branch, both.worst, both.low, both.allow)

    def _kept(self, domains: Domains) -> bool | set:
        """The tensors whose parent boxes the children keep: all, or (``refine``) those up to the layer of the
        earliest new split (later ones change with it)."""
        if not self.refine:
            return True
        sizes = np.cumsum([domains.splits[name][0].numel() for name in self.names])
        layer = int(np.searchsorted(sizes, int(domains.branch[domains.branch >= 0].min()), side="right"))
        return set(self.names[: layer + 1])

    def _bound(self, lower, upper, spec: Spec, margin, domains: Domains | None, deadline, candidate,
               outcome: Outcome, steps: int | None = None) -> Domains | None:
        """Bound ``domains`` (None: the root) with ``steps`` alpha steps (default: the root's or the children's),
        record progress in ``outcome``; the open ones with their next branch, or None when none is open."""
        n = 1 if domains is None else len(domains)
        lo_in = torch.as_tensor(lower, dtype=torch.float64).reshape(1, *self.shape).expand(n, *self.shape)
        hi_in = torch.as_tensor(upper, dtype=torch.float64).reshape(1, *self.shape).expand(n, *self.shape)
        prop, steps, warm = self._propagate(lo_in, hi_in, domains, deadline, steps)
        c = self._spec_rows(prop, spec, n)
        kept: dict = {}
        inherited = None if domains is None else domains.allow.numpy()
        low = prop.lower(c, alpha_steps=steps, stop=self._stop(spec, margin, inherited), warm=warm, keep=kept)
        exact = low.detach().T.numpy()
        if domains is not None:  # a parent's bound holds on its children
            exact = np.maximum(exact, domains.low.numpy())
        low_now = exact
        exact = exact - spec.d[None]
        allow = self._allowance(prop, c, spec, exact, margin, inherited)
        gap = exact - allow
        record: dict = {}
        with torch.no_grad():
            coef_in, _ = prop.backward(prop.output_name, c, kept.get("theta"), kept.get("beta"), record=record)
        done, weight, worst = self._closed(gap, spec, margin)
        done |= prop.infeasible().numpy()
        outcome.domains += n
        open_ = np.flatnonzero(~done)
        if open_.size:
            found = candidate(self._vertices(coef_in, gap, weight, lo_in, hi_in, open_))
            if found is not None:
                outcome.result, outcome.found = "found", found
                return None
            leaves = open_[~self._unstable(prop, open_)]
            if leaves.size:
                if not self._close_leaves(prop, spec, margin, leaves, candidate, outcome):
                    return None
                done[leaves] = True
        outcome.proved += int(done.sum())
        open_ = np.flatnonzero(~done)
        if open_.size == 0:
            return None
        branch = self._branch(prop, record, weight, open_, c, kept, spec, margin)
        index = torch.as_tensor(open_)
        split_now = {name: (prop.splits[name][index].to(torch.int8) if name in prop.splits else
                            torch.zeros(prop.bounds[name].lo[index].shape, dtype=torch.int8)) for name in self.names}
        warm_now = {k: {i: t[:, index].transpose(0, 1).to(torch.float32) for i, t in kept.get(k, {}).items()}
                    for k in ("theta", "beta")}
        return Domains(split_now, {name: prop.bounds[name].lo[index] for name in self.names},
                       {name: prop.bounds[name].hi[index] for name in self.names}, warm_now["theta"],
                       warm_now["beta"], branch, *(torch.as_tensor(v[open_]) for v in (worst, low_now, allow)))

    def _propagate(self, lo_in, hi_in, domains: Domains | None, deadline, steps: int | None):
        """The propagation of ``domains`` (None: the root, with optimised intermediate bounds), its alpha steps and
        its warm start."""
        if domains is None:
            until = time.monotonic() + ROOT_INTERMEDIATE_SHARE * (deadline - time.monotonic())
            prop = Propagation(self.graph, Region(lo_in, hi_in), "crown", deadline=deadline,
                               alpha_steps=ROOT_INTERMEDIATE_STEPS, alpha_until=until)
            self._sizes = {name: prop.bounds[name].lo[0] for name in self.names}
            self._errors = self._root_errors(prop)
            return prop, ROOT_ALPHA_STEPS if steps is None else steps, None
        prior = {name: Interval(domains.lo[name], domains.hi[name]) for name in domains.lo}
        prop = Propagation(self.graph, Region(lo_in, hi_in), "crown", splits=domains.splits, prior=prior,
                           deadline=deadline, keep_prior=self._kept(domains))
        warm = {k: {i: t.transpose(0, 1) for i, t in getattr(domains, k).items()} for k in ("theta", "beta")}
        return prop, self.alpha_steps if steps is None else steps, warm

    def _close_leaves(self, prop, spec: Spec, margin, leaves, candidate, outcome: Outcome) -> bool:
        """Subdomains with every neuron split: each leaf's exact LP, then a longer beta optimisation. False (with
        ``outcome`` set) when a leaf gives a counterexample or stays open: the search ends."""
        lp_closed, found = close_leaves(prop, [name for _, name in self.steps], spec, margin, leaves, candidate)
        if found is not None:
            outcome.result, outcome.found = "found", found
            return False
        rest = leaves[~lp_closed]
        if rest.size and not self._leaves_closed(prop, spec, margin, rest):
            outcome.result = "stuck"
            return False
        return True

    @staticmethod
    def _spec_rows(prop, spec: Spec, n: int) -> torch.Tensor:
        out_shape = prop.bounds[prop.output_name].lo.shape[1:]
        S = spec.C.shape[0]
        return torch.as_tensor(spec.C, dtype=torch.float64).reshape(S, 1, *out_shape).expand(S, n, *out_shape)

    @staticmethod
    def _gap(low: torch.Tensor, spec: Spec, allow: np.ndarray | None = None) -> np.ndarray:
        """(n, S) gaps of bounds (S, n) after the allowances ``allow`` (n, S) or the box's."""
        return low.detach().T.numpy() - spec.d[None] - (spec.error[None] if allow is None else allow)

    def _stop(self, spec: Spec, margin: float, allow: np.ndarray | None = None):
        """Whether bounds (S, n) already close every subdomain (ends the slope optimisation early), with the
        allowances ``allow`` (n, S) or the box's."""
        return lambda low: bool(self._closed(self._gap(low, spec, allow), spec, margin)[0].all())

    @staticmethod
    def _closed(gap: np.ndarray, spec: Spec, margin: float):
        """Per subdomain whether every group has a row above ``margin``; the open groups' best rows (weights,
        (n, S)); the smallest best gap of an open group (inf when none)."""
        n = gap.shape[0]
        weight = np.zeros_like(gap)
        worst = np.full(n, np.inf)
        for rows in spec.groups:
            sub = gap[:, rows]
            best = sub.argmax(1)
            closed = sub.max(1) > margin
            weight[np.flatnonzero(~closed), rows[best[~closed]]] = 1.0
            worst = np.minimum(worst, np.where(closed, np.inf, sub.max(1)))
        return np.all(weight == 0, axis=1), weight, worst

    def _allowance(self, prop, c: torch.Tensor, spec: Spec, exact: np.ndarray, margin: float,
                   inherited: np.ndarray | None = None) -> np.ndarray:
        """(n, S) float32 error allowances: the parents' (``inherited``; an error bound over a parent's boxes holds
        on its children) or the whole box's (``spec.error``), and for the subdomains only that keeps open, the
        smaller one of the forward error analysis over their own boxes (tighter than the box's, with the split
        neurons stable; started from the root's). Sound: every input of a subdomain has exact values inside its
        boxes."""
        error = np.broadcast_to(spec.error if inherited is None else inherited, exact.shape).copy()
        pick = np.flatnonzero(self._closed(exact, spec, margin)[0] & ~self._closed(exact - error, spec, margin)[0])
        if pick.size:
            index = torch.as_tensor(pick)
            try:
                local = forward_errors(prop.subset(index), prior=self._errors, signed=False).spec(c[:, index]).T.numpy()
            except UnsupportedOperator:
                return error
            error[pick] = np.fmin(error[pick], np.where(np.isfinite(local), local, np.inf))
        return error

    @staticmethod
    def _root_errors(prop) -> dict:
        """The float32 error bounds over the whole box (they hold in every subdomain): each subdomain's own analysis
        starts from them."""
        try:
            return forward_errors(prop).errors
        except UnsupportedOperator:
            return {}

    def _leaves_closed(self, prop, spec: Spec, margin: float, leaves: np.ndarray) -> bool:
        """Whether subdomains without unstable neurons close after a longer beta optimisation."""
        index = torch.as_tensor(leaves)
        names = [name for _, name in self.steps]
        region = prop.region.subset(index)
        leaf = Propagation(self.graph, region, "crown", splits={n: prop.splits[n][index] for n in prop.splits},
                           prior={n: Interval(prop.bounds[n].lo[index], prop.bounds[n].hi[index]) for n in names},
                           deadline=prop.deadline)
        c = self._spec_rows(leaf, spec, len(leaves))
        gap = self._gap(leaf.lower(c, alpha_steps=LEAF_STEPS, lr=LEAF_LR, stop=self._stop(spec, margin)), spec)
        done, _, _ = self._closed(gap, spec, margin)
        return bool((done | leaf.infeasible().numpy()).all())

    def _vertices(self, coef_in, gap, weight, lo_in, hi_in, open_) -> np.ndarray:
        """Per open subdomain, the input vertex minimising the linear bound of its hardest open row."""
        masked = np.where(weight > 0, gap, np.inf)
        row = torch.as_tensor(masked[open_].argmin(1))
        idx = torch.as_tensor(open_)
        a = coef_in[row, idx]
        x = torch.where(a >= 0, lo_in[idx], hi_in[idx])
        return x.reshape(len(open_), -1).numpy()

    def _unstable(self, prop, open_) -> np.ndarray:
        """Per open subdomain whether some neuron of a split tensor is unstable (else it is a leaf)."""
        idx = torch.as_tensor(open_)
        found = torch.zeros(len(open_), dtype=torch.bool)
        for name in self.names:
            box = prop.bounds[name]
            found |= ((box.lo[idx] < 0) & (box.hi[idx] > 0)).flatten(1).any(1)
        return found.numpy()

    def _branch(self, prop, record, weight, open_, c, kept, spec: Spec, margin: float) -> torch.Tensor:
        """Per open subdomain the flat indices of the neurons to split next, (n, MAX_SPLIT_DEPTH) in order
        (:func:`branching.choose`)."""
        params = prop._parameters(prop.output_name, c, kept or None)
        worst = lambda low: self._closed(self._gap(low, spec), spec, margin)[2]  # noqa: E731
        branch, _ = choose(prop, self.steps, record, weight, open_, c, params, worst, self.top_k, MAX_SPLIT_DEPTH)
        return branch
