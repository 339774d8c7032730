"""Input splitting for low-dimensional inputs (ACAS Xu has 5): bisect boxes until every one is proved.

Boxes are bounded many at once (up to ``MAX_BATCH``), cheapest first (:class:`CrownSteps`): interval bounds for
the hidden tensors, intersected with the parent box's hidden bounds (they hold on every sub-box), and CROWN on the
output; a box this does not prove gets CROWN bounds on its hidden tensors too (alpha-CROWN on the output was
measured on ACAS Xu to cost more than the splits it saves); one still open is bisected, and its children inherit
its refined hidden bounds.

The side to bisect: every side's bisection is tried with the cheap step (both children, each counted up to the
margin), in the spirit of the bound-improvement branching of Bunel et al. (JMLR 2020), plus the smear heuristic
(Kearfott 1996: absolute gradient at the centre times the side's width), each scaled to [0, 1] per box; the
trial sees which split the bound rewards, the smear breaks its ties where the cheap bound is flat.

Float32 error: each row's allowance is the whole case's (it covers every sub-box) until a box reaches the strong
step, which computes the box's own forward error bound (:mod:`certify.local.float_error`, much smaller on small
boxes); its children inherit the smaller of the two.

The search (:func:`split_search`) is depth first in batches; every batch's box centres are offered to ``check``
(which confirms counterexamples in onnxruntime) before they are bounded. The time limit holds inside a batch too:
CROWN propagations stop at the deadline, and the steps without a deadline of their own (interval propagations,
the allowance, the gradients) run in chunks (:func:`in_chunks`) that stop before one the measured pace says would
overrun it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from certify.local.bounds import BoundTimeout, Propagation
from certify.local.region import Region
from certify.local.rules import Interval

MAX_BATCH = 4096
FIRST_BATCH = 64
FIRST_CHUNK = 64  # boxes per first chunk of a step without a deadline of its own (allowance, gradients, IBP)


@dataclass
class Boxes:
    """A stack of boxes (M, n), each row's float32 allowance (M, S) and the hidden tensors' bounds valid on each
    box (name -> Interval with a leading M axis; empty when the bound step keeps none)."""

    lower: np.ndarray
    upper: np.ndarray
    allowance: np.ndarray
    prior: dict

    def __len__(self) -> int:
        return self.lower.shape[0]

    def take(self, index) -> Boxes:
        return Boxes(self.lower[index], self.upper[index], self.allowance[index],
                     {k: Interval(v.lo[index], v.hi[index]) for k, v in self.prior.items()})


@dataclass
class Bounded:
    """One batch's result: lower bounds of ``C y - d`` with the allowance subtracted (N, S); for the open boxes
    the split scores per input side (N, n), the allowance and the hidden bounds their children inherit."""

    gap: np.ndarray
    scores: np.ndarray
    allowance: np.ndarray
    prior: dict


def closed(gap: np.ndarray, groups: list[np.ndarray], margin: float) -> np.ndarray:
    """Per box, whether every disjunct has a row whose bound exceeds ``margin`` (a disjunct without rows never)."""
    done = np.ones(gap.shape[0], dtype=bool)
    for rows in groups:
        done &= (gap[:, rows] > margin).any(axis=1) if rows.size else False
    return done


class CrownSteps:
    """The bound step of :func:`split_search` on the bound engine's float64 graph (see the module docstring).
    ``allowance(prop, c)`` is a box's own float32 allowance (N, S); ``gradients(lo, hi)`` the summed absolute
    gradients of the rows at the centres (N, n)."""

    def __init__(self, graph, shape: tuple[int, ...], C: np.ndarray, d: np.ndarray, groups: list[np.ndarray],
                 margin: float, allowance: Callable, gradients: Callable):
        self.graph, self.shape, self.C, self.d, self.groups = graph, shape, C, d, groups
        self.margin, self.allowance, self.gradients = margin, allowance, gradients
        self.pace: dict[str, float] = {}  # seconds per box of each chunked step, as last measured

    def _propagate(self, boxes: Boxes, method: str, deadline: float):
        """The propagation over ``boxes`` (hidden bounds: ``"ibp"`` or ``"crown"``, both within the priors),
        the spec rows and their CROWN lower bounds, before the allowance (S, N)."""
        n = len(boxes)
        region = Region(torch.as_tensor(boxes.lower).reshape(n, *self.shape),
                        torch.as_tensor(boxes.upper).reshape(n, *self.shape))
        prop = Propagation(self.graph, region, method, prior=boxes.prior or None, deadline=deadline)
        out_shape = prop.bounds[prop.output_name].lo.shape[1:]
        S = self.C.shape[0]
        c = torch.as_tensor(self.C, dtype=torch.float64).reshape(S, 1, *out_shape).expand(S, n, *out_shape)
        with torch.no_grad():  # CROWN on the output whatever the hidden bounds (Propagation.lower is IBP for "ibp")
            crown = prop.linear_lower(prop.output_name, c) - prop._spec_rounding(c)
        return prop, c, torch.maximum(crown, prop.interval_lower(c))

    def _worst(self, gap: np.ndarray) -> np.ndarray:
        """Per box, the smallest over disjuncts of the disjunct's best row."""
        worst = np.full(len(gap), np.inf)
        for rows in self.groups:
            if rows.size:
                worst = np.minimum(worst, gap[:, rows].max(1))
        return worst

    def __call__(self, boxes: Boxes, deadline: float) -> Bounded:
        low = in_chunks(lambda i: self._propagate(boxes.take(i), "ibp", deadline)[2].T.numpy(), len(boxes),
                        deadline, pace=self.pace, key="ibp")
        gap = low - self.d - boxes.allowance
        scores = np.zeros(boxes.lower.shape)
        allowance, prior = boxes.allowance.copy(), {}
        hard = np.flatnonzero(~closed(gap, self.groups, self.margin))
        if hard.size:
            sub = boxes.take(hard)
            prop, c, low = self._propagate(sub, "crown", deadline)
            own = in_chunks(lambda i: self.allowance(_part(prop, i), c[:, torch.as_tensor(i)]), len(hard), deadline,
                            pace=self.pace, key="allowance")
            allowance[hard] = np.minimum(sub.allowance, own)
            gap[hard] = np.maximum(gap[hard], low.T.numpy() - self.d - allowance[hard])
            reads = [name for name in prop.reads if name != prop.input_name]
            hidden = {name: prop.bounds[name] for name in reads}
            parents = Boxes(sub.lower, sub.upper, allowance[hard], hidden)
            tries = in_chunks(lambda i: self._tries(parents.take(i), deadline), len(hard), deadline,
                              pace=self.pace, key="tries")
            smear = in_chunks(lambda i: self.gradients(sub.lower[i], sub.upper[i]), len(hard), deadline,
                              pace=self.pace, key="gradients")
            smear = smear * (sub.upper - sub.lower)
            scores[hard] = ((tries - tries.min(1, keepdims=True)) / (np.ptp(tries, axis=1, keepdims=True) + 1e-12)
                            + smear / (smear.max(1, keepdims=True) + 1e-300))
            prior = {name: Interval(_full(box.lo, hard, len(boxes)), _full(box.hi, hard, len(boxes)))
                     for name, box in hidden.items()}
        return Bounded(gap, scores, allowance, prior)

    def _tries(self, boxes: Boxes, deadline: float) -> np.ndarray:
        """(N, n): per box and side, the cheap bounds of both children if that side is bisected (each child's
        worst disjunct, counted up to ``margin``: a proved child gains nothing more), summed."""
        n, k = boxes.lower.shape
        rows, side, half = np.arange(n * 2 * k), np.tile(np.repeat(np.arange(k), 2), n), np.tile([0, 1], n * k)
        lower, upper = np.repeat(boxes.lower, 2 * k, axis=0), np.repeat(boxes.upper, 2 * k, axis=0)
        mid = (lower[rows, side] + upper[rows, side]) / 2
        upper[rows[half == 0], side[half == 0]] = mid[half == 0]
        lower[rows[half == 1], side[half == 1]] = mid[half == 1]
        kids = Boxes(lower, upper, np.repeat(boxes.allowance, 2 * k, axis=0), {})
        kids.prior = boxes.take(np.repeat(np.arange(n), 2 * k)).prior
        _, _, low = self._propagate(kids, "ibp", deadline)
        worst = self._worst(low.T.numpy() - self.d - kids.allowance)
        return np.minimum(worst, self.margin).reshape(n, k, 2).sum(2)


def in_chunks(fn: Callable[[np.ndarray], np.ndarray], count: int, deadline: float, first: int = FIRST_CHUNK,
              pace: dict | None = None, key: str = "") -> np.ndarray:
    """``fn(index)`` over consecutive chunks of ``range(count)`` (doubling from ``first``), concatenated: a step
    with no deadline of its own stops between chunks, raising :class:`~certify.local.bounds.BoundTimeout` before
    one that the pace (seconds per box) measured on the previous one says cannot end by ``deadline``; ``pace[key]``
    carries it from one call to the next."""
    pace = {} if pace is None else pace
    parts, start, size = [], 0, first
    while start < count:
        index = np.arange(start, min(start + size, count))
        now = time.monotonic()
        if now + pace.get(key, 0.0) * len(index) > deadline:
            raise BoundTimeout
        parts.append(fn(index))
        pace[key] = (time.monotonic() - now) / len(index)
        start, size = start + len(index), 2 * size
    return np.concatenate(parts)


def _part(prop: Propagation, index: np.ndarray) -> Propagation:
    """The propagation restricted to the boxes ``index`` (itself when that is all of them)."""
    n = prop.region.lower.shape[0]
    return prop if len(index) == n else prop.subset(torch.as_tensor(index))


def _full(values: torch.Tensor, index: np.ndarray, n: int) -> torch.Tensor:
    """``values`` (len(index), ...) placed at ``index`` of an (n, ...) tensor (unused rows are never read)."""
    out = values.new_zeros((n, *values.shape[1:]))
    out[torch.as_tensor(index)] = values
    return out


def bisect(boxes: Boxes, dims: np.ndarray) -> Boxes:
    """Both halves of every box along its side ``dims``; both inherit the box's allowance and hidden bounds."""
    rows = np.arange(len(boxes))
    mid = (boxes.lower[rows, dims] + boxes.upper[rows, dims]) / 2
    left_hi, right_lo = boxes.upper.copy(), boxes.lower.copy()
    left_hi[rows, dims] = mid
    right_lo[rows, dims] = mid
    twice = {k: Interval(torch.cat([v.lo, v.lo]), torch.cat([v.hi, v.hi])) for k, v in boxes.prior.items()}
    return Boxes(np.concatenate([boxes.lower, right_lo]), np.concatenate([left_hi, boxes.upper]),
                 np.concatenate([boxes.allowance, boxes.allowance]), twice)


def _pop(stack: list[Boxes], batch: int) -> Boxes:
    """Up to ``batch`` boxes from the top of the stack (the deepest first)."""
    parts, count = [], 0
    while stack and count < batch:
        top = stack.pop()
        if count + len(top) > batch:
            stack.append(top.take(np.arange(batch - count, len(top))))
            top = top.take(np.arange(batch - count))
        parts.append(top)
        count += len(top)
    if len(parts) == 1:
        return parts[0]
    return Boxes(np.concatenate([p.lower for p in parts]), np.concatenate([p.upper for p in parts]),
                 np.concatenate([p.allowance for p in parts]),
                 {k: Interval(torch.cat([p.prior[k].lo for p in parts]), torch.cat([p.prior[k].hi for p in parts]))
                  for k in parts[0].prior})


def split_search(step: Callable[[Boxes, float], Bounded], root: Boxes, groups: list[np.ndarray], margin: float,
                 deadline: float, check: Callable, stats: dict):
    """Bisect until every box is proved (True), ``check`` confirms a counterexample (returned), or the deadline
    passes (False; a bound step may also raise :class:`~certify.local.bounds.BoundTimeout`). ``stats`` counts the
    boxes bounded and proved."""
    width0 = np.where(root.upper > root.lower, root.upper - root.lower, 1.0)
    stack, batch = [root], FIRST_BATCH
    while stack:
        now = time.monotonic()
        if now > deadline:
            return False
        top = _pop(stack, batch)
        stats["boxes"] += len(top)
        found = check(top.lower, top.upper)
        if found is not None:
            return found
        result = step(top, deadline)
        spent, left = time.monotonic() - now, deadline - time.monotonic()
        batch = int(np.clip(batch * min(2.0, 0.25 * left / max(spent, 1e-3)), 1, MAX_BATCH))
        done = closed(result.gap, groups, margin)
        stats["proved"] += int(done.sum())
        keep = np.flatnonzero(~done)
        if keep.size:
            parent = Boxes(top.lower[keep], top.upper[keep], result.allowance[keep],
                           {k: Interval(v.lo[keep], v.hi[keep]) for k, v in result.prior.items()})
            rel = (parent.upper - parent.lower) / width0
            dims = np.argmax(result.scores[keep] + 1e-9 * rel, axis=1)
            stack.append(bisect(parent, dims))
    return True
