"""Shared bookkeeping for minimal-perturbation attacks: the smallest misclassified point per sample so far, a final
bisection towards the clean input, and the per-sample search over a trade-off constant (CW's c, Szegedy's c)."""

from __future__ import annotations

import math

import torch

from certify.attacks.box import expand_as_batch, flat_norm
from certify.attacks.losses import misclassified


class Smallest:
    """The smallest-norm misclassified candidate per sample (``x`` itself where none was found)."""

    def __init__(self, x: torch.Tensor, norm: str):
        self.x, self.norm = x, norm
        self.best = x.clone()
        self.dist = torch.full((x.shape[0],), math.inf, device=x.device, dtype=x.dtype)

    def offer(self, cand: torch.Tensor, wrong: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        """Keep ``cand`` where it is misclassified and smaller; returns which rows were misclassified.

        ``dist`` (the candidates' distances, when the caller has them) is for ranking only; reports re-measure in
        float64."""
        d = flat_norm(cand.detach() - self.x, self.norm) if dist is None else dist.detach()
        better = wrong & (d < self.dist)
        self.best = torch.where(expand_as_batch(better, cand), cand.detach(), self.best)
        self.dist = torch.where(better, d, self.dist)
        return wrong

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.dist)

    def refined(self, model, y: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """The kept candidates, each moved towards x by bisection as far as it stays misclassified (8 steps: within
        0.4% of the crossing on the segment)."""
        closer = bisect_to_boundary(model, self.x, y, self.best, steps)
        self.offer(closer, self.found)  # bisection only returns points it saw misclassified
        return self.best


class ConstantSearch:
    """Per-sample search for the trade-off constant: grow by 10 until an attack succeeds, then bisect.

    When c weights the distance term (Szegedy), a success means c may go up (smaller solutions); when c weights the
    misclassification term (Carlini-Wagner), a success means c may go down.
    """

    def __init__(self, n: int, initial: float, device, c_weights_distance: bool = True):
        self.c = torch.full((n,), float(initial), device=device, dtype=torch.float64)
        self.lo = torch.zeros(n, device=device, dtype=torch.float64)
        self.hi = torch.full((n,), math.inf, device=device, dtype=torch.float64)
        self.up = c_weights_distance

    def update(self, succeeded: torch.Tensor) -> None:
        ok = succeeded if self.up else ~succeeded
        self.lo = torch.where(ok, self.c, self.lo)
        self.hi = torch.where(ok, self.hi, self.c)
        grown = torch.where(torch.isinf(self.hi), self.c * 10, (self.lo + self.hi) / 2)
        shrunk = torch.where(self.lo == 0, self.c / 10, (self.lo + self.hi) / 2)
        self.c = torch.where(ok, grown, shrunk)


@torch.no_grad()
def bisect_to_boundary(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Move each misclassified ``x_adv`` along the segment towards ``x`` as far as it stays misclassified.

    The segment lies in the box (both ends do), so the result stays feasible; it is never farther than ``x_adv``.
    Rows of ``x_adv`` that are not misclassified come back unchanged.
    """
    lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)  # fraction of the way known to be correct
    hi = torch.ones_like(lo)  # fraction known to be misclassified
    delta = x_adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        wrong = misclassified(model(x + delta * expand_as_batch(mid, delta)), y)
        hi = torch.where(wrong, mid, hi)
        lo = torch.where(wrong, lo, mid)
    return x + delta * expand_as_batch(hi, delta)
