"""Keeping the first misclassified point per sample, dropping finished samples, and the restart loop."""

from __future__ import annotations

from collections.abc import Callable

import torch

from certify.attacks.base import AttackContext
from certify.attacks.box import expand_as_batch


class ActiveSet:
    """The samples an iterative attack still works on, and the first misclassified point seen for each.

    ``record`` is sync-free (one ``where``); ``shrink`` drops finished samples (one host sync), so callers do it every
    few steps only.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext):
        self.n = x.shape[0]
        self.index = torch.arange(self.n, device=x.device)
        self.x, self.y, self.feasible = x, y, ctx.feasible
        self.best = x.clone()
        self.found = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        self._out = x.clone()
        self._out_found = torch.zeros(self.n, dtype=torch.bool, device=x.device)

    def record(self, x_cur: torch.Tensor, wrong: torch.Tensor) -> None:
        new = wrong & ~self.found
        self.best = torch.where(expand_as_batch(new, x_cur), x_cur, self.best)
        self.found = self.found | wrong

    def shrink(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Write finished samples out; keep the rest (and the rows of ``tensors``). None when all are finished."""
        keep = ~self.found
        if bool(keep.all()):
            return tensors
        self._flush(self.found)
        if not bool(keep.any()):
            return None
        self.index, self.x, self.y = self.index[keep], self.x[keep], self.y[keep]
        self.feasible = self.feasible.subset(keep)
        self.best, self.found = self.best[keep], self.found[keep]
        return tuple(t[keep] for t in tensors)

    def finish(self, x_last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidates, found) for the whole batch: the first misclassified point, else the last iterate."""
        if x_last is not None:
            self.best = torch.where(expand_as_batch(self.found, x_last), self.best, x_last)
        self._flush(torch.ones_like(self.found))
        return self._out, self._out_found

    def _flush(self, rows: torch.Tensor) -> None:
        idx = self.index[rows]
        self._out[idx] = self.best[rows]
        self._out_found[idx] = self.found[rows]


RunOnce = Callable[[torch.Tensor, torch.Tensor, AttackContext, int], tuple[torch.Tensor, torch.Tensor]]


def with_restarts(run_once: RunOnce, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext,
                  restarts: int) -> torch.Tensor:
    """Run ``run_once(x, y, ctx, restart)`` up to ``restarts`` times, each time only on samples not yet broken."""
    out = x.clone()
    todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for r in range(restarts):
        idx = todo.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        sub = AttackContext(ctx.feasible.subset(idx), ctx.generator, ctx.step)
        adv, found = run_once(x[idx], y[idx], sub, r)
        out[idx] = adv
        todo[idx[found]] = False
    return out
