"""Square attack (Andriushchenko et al. 2020): a score-based random search that uses no gradient, so gradient
masking cannot hide adversarial examples from it.

Inputs of shape (C, *spatial) are perturbed in random hyper-square windows of every channel (a flat vector is one
channel with one spatial axis). The window covers a fraction p of the positions; p halves on the paper's schedule.
L-inf: windows are set to +-eps per channel (initialised with +-eps stripes). L2: the mass of two windows and the
unused budget move into one window as a random-sign bump (a simplified form of the paper's update that keeps
||delta||_2 <= eps exactly). A candidate is kept when it raises the margin max_{j != y} z_j - z_y.
"""

from __future__ import annotations

import math

import torch

from certify.attacks.base import Attack, AttackContext
from certify.attacks.box import expand_as_batch, flat_norm
from certify.attacks.losses import margin
from certify.attacks.restarts import ActiveSet

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init: float, i: int, queries: int) -> float:
    """The paper's schedule for the window fraction, rescaled from 10 000 queries to ``queries``."""
    scaled = int(i / queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


def _channels_view(t: torch.Tensor) -> torch.Tensor:
    """(n, C, *spatial) view of a batch: the first sample axis is channels unless the sample is a flat vector."""
    return t.unsqueeze(1) if t.dim() == 2 else t


class _Windows:
    """Random hyper-square windows, one per sample, over the spatial axes of a (n, C, *spatial) batch."""

    def __init__(self, spatial: tuple[int, ...], fraction: float, n: int, generator, device):
        k = len(spatial)
        side = max(1, round((fraction * math.prod(spatial)) ** (1.0 / k)))
        self.sides = [min(side, s) for s in spatial]
        self.offsets = [torch.randint(0, s - h + 1, (n,), generator=generator, device=device)
                        for s, h in zip(spatial, self.sides)]
        self.spatial = spatial

    def _axis(self, d: int) -> torch.Tensor:
        """Positions along spatial axis ``d`` relative to each window's start, shaped to broadcast."""
        k = len(self.spatial)
        shape = [1] * (k + 2)
        shape[d + 2] = self.spatial[d]
        pos = torch.arange(self.spatial[d], device=self.offsets[d].device).reshape(shape)
        return pos - self.offsets[d].reshape([-1] + [1] * (k + 1))

    def mask(self) -> torch.Tensor:
        """(n, 1, *spatial) boolean mask of the windows."""
        m = None
        for d, h in enumerate(self.sides):
            rel = self._axis(d)
            inside = (rel >= 0) & (rel < h)
            m = inside if m is None else m & inside
        return m

    def bump(self) -> torch.Tensor:
        """(n, 1, *spatial) positive bump centred in each window, zero outside it."""
        r2 = 0
        for d, h in enumerate(self.sides):
            r2 = r2 + (self._axis(d).float() - (h - 1) / 2) ** 2
        return torch.where(self.mask(), 1.0 / (1.0 + r2), 0.0)


class Square(Attack):
    name = "square"
    gradient_free = True
    defaults = {"queries": 1000, "p_init": 0.8}

    def validate(self) -> None:
        self._positive_int("queries")
        self._positive_float("p_init")
        if self.params["p_init"] > 1:
            raise ValueError("square: p_init must lie in (0, 1]")

    def _signs(self, shape, ctx: AttackContext, like: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=ctx.generator, device=like.device).to(like.dtype) * 2 - 1

    @torch.no_grad()
    def perturb(self, model, x, y, ctx):
        norm, eps, queries = ctx.norm, ctx.eps, self.params["queries"]
        xc = _channels_view(x)
        n, channels, spatial = xc.shape[0], xc.shape[1], tuple(xc.shape[2:])
        stripes = self._signs((n, channels) + (1,) * (len(spatial) - 1) + (spatial[-1],), ctx, x)
        delta = stripes.expand_as(xc)
        if norm == "l2":
            delta = delta * expand_as_batch(eps / flat_norm(delta, "l2"), delta)
        else:
            delta = delta * eps
        x_best = ctx.feasible.project(x + delta.reshape(x.shape))
        best = margin(model(x_best), y)
        active = ActiveSet(x, y, ctx)
        active.record(x_best, best > 0)
        for i in range(1, queries):
            kept = active.shrink(x_best, best)
            if kept is None:
                return active.finish()[0]
            x_best, best = kept
            ctx.step()
            frac = window_fraction(self.params["p_init"], i, queries)
            cand = self._candidate(active.x, x_best, active.feasible, frac, spatial, ctx)
            new = margin(model(cand), active.y)
            better = new > best
            x_best = torch.where(expand_as_batch(better, cand), cand, x_best)
            best = torch.where(better, new, best)
            active.record(x_best, best > 0)
        return active.finish(x_best)[0]

    def _candidate(self, x, x_best, feasible, frac, spatial, ctx):
        xc, bc = _channels_view(x), _channels_view(x_best)
        n, channels = xc.shape[:2]
        w1 = _Windows(spatial, frac, n, ctx.generator, x.device)
        signs = self._signs((n, channels) + (1,) * len(spatial), ctx, x)
        delta = bc - xc
        if ctx.norm == "linf":
            delta = torch.where(w1.mask(), signs * ctx.eps, delta)
        else:
            w2 = _Windows(spatial, frac, n, ctx.generator, x.device)
            union = w1.mask() | w2.mask()
            spatial_axes = tuple(range(2, delta.dim()))
            mass = (delta * union).square().sum(dim=spatial_axes, keepdim=True)
            unused = (ctx.eps ** 2 - flat_norm(delta, "l2").square()).clamp_min(0)
            target = (mass + expand_as_batch(unused, mass) / channels).sqrt()
            bump = w1.bump().to(x.dtype)
            bump = bump / bump.square().sum(dim=spatial_axes, keepdim=True).sqrt()
            delta = torch.where(union, 0.0, delta) + signs * bump * target
        return feasible.project((xc + delta).reshape(x.shape))
