"""The feasible set of an attack: the input box intersected with the eps-ball, kept exact in float32.

Bounds are rounded *inward* (towards the clean input) so that every float32 point inside them is inside the true box
and the true ball when measured in float64; the clean input is always feasible, even when it sits a rounding error
outside the nominal box.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NORMS = ("l2", "linf")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; one of {', '.join(NORMS)}")
    return norm


def _inward_up(bound: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``bound`` (float) moved down by one ulp wherever it exceeds the float64 ``exact`` value."""
    too_high = bound.double() > exact
    return torch.where(too_high, torch.nextafter(bound, torch.full_like(bound, -math.inf)), bound)


def _inward_down(bound: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    too_low = bound.double() < exact
    return torch.where(too_low, torch.nextafter(bound, torch.full_like(bound, math.inf)), bound)


class Box:
    """The valid input range: scalars or arrays broadcastable to one sample's shape."""

    def __init__(self, lo, hi):
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        if not (np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.hi))):
            raise ValueError("input_range must be finite")
        if np.any(self.lo >= self.hi):
            raise ValueError("input_range: the lower end must be below the upper end")

    def describe(self) -> list:
        return [self.lo.tolist(), self.hi.tolist()]

    def width(self, sample_shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(self.hi - self.lo, sample_shape)

    def diameter(self, norm: str, sample_shape: tuple[int, ...]) -> float:
        """The largest distance between two points of the box: every box point is within it of any other."""
        w = self.width(sample_shape)
        return float(np.max(w)) if norm == "linf" else float(np.sqrt(np.sum(np.square(w))))

    def check_inside(self, x: np.ndarray, rtol: float = 1e-6) -> None:
        """Refuse inputs outside the box (beyond float rounding), naming the first offending sample."""
        tol = rtol * max(1.0, float(np.max(np.abs(self.lo))), float(np.max(np.abs(self.hi))))
        bad = np.any((x < self.lo - tol) | (x > self.hi + tol), axis=tuple(range(1, x.ndim)))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"sample {i} lies outside input_range [{self.lo.min()}, {self.hi.max()}]")

    def bounds_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element float bounds for the batch ``x``: the box rounded inward, widened to contain ``x`` itself."""
        lo64 = torch.as_tensor(self.lo, device=x.device)
        hi64 = torch.as_tensor(self.hi, device=x.device)
        lo = _inward_down(lo64.to(x.dtype), lo64)
        hi = _inward_up(hi64.to(x.dtype), hi64)
        return torch.minimum(lo.expand_as(x), x), torch.maximum(hi.expand_as(x), x)


class Feasible:
    """The feasible set for one batch: box bounds, and for L-inf the ball folded into them."""

    def __init__(self, x: torch.Tensor, box: Box, norm: str, eps: float | None):
        self.x = x
        self.norm = check_norm(norm)
        self.eps = eps
        self.box_lo, self.box_hi = box.bounds_for(x)
        self.lo, self.hi = self.box_lo, self.box_hi
        if eps is not None and norm == "linf":
            x64 = x.double()
            up = _inward_up((x64 + eps).to(x.dtype), x64 + eps)  # rounded once, then at most one ulp inward
            down = _inward_down((x64 - eps).to(x.dtype), x64 - eps)
            self.lo = torch.maximum(self.box_lo, down)
            self.hi = torch.minimum(self.box_hi, up)

    def clip_box(self, x_adv: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x_adv, self.box_lo, self.box_hi)

    def subset(self, idx: torch.Tensor) -> Feasible:
        """The same constraints for the rows ``idx`` of the batch (attacks drop finished samples)."""
        sub = object.__new__(Feasible)
        sub.norm, sub.eps = self.norm, self.eps
        for name in ("x", "box_lo", "box_hi", "lo", "hi"):
            setattr(sub, name, getattr(self, name)[idx])
        return sub

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Into the eps-ball and the box (L2: radial shrink, then box clip, which only moves points closer to x)."""
        if self.norm == "linf" or self.eps is None:
            return torch.clamp(x_adv, self.lo, self.hi)
        delta = x_adv - self.x
        n = flat_norm(delta, "l2")
        factor = torch.clamp(self.eps / n.clamp_min(1e-30), max=1.0)
        return torch.clamp(self.x + delta * expand_as_batch(factor, delta), self.box_lo, self.box_hi)

    def enforce(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Make the batch exactly feasible as measured in float64 (a final pass; cheap, not per step)."""
        x_adv = torch.clamp(x_adv, self.lo, self.hi)
        if self.eps is None or self.norm == "linf":
            return x_adv
        x64 = self.x.double()
        for _ in range(40):
            d = x_adv.double() - x64
            n = flat_norm(d, "l2")
            over = n > self.eps
            if not bool(over.any()):
                return x_adv
            shrink = torch.where(over, self.eps / n * (1 - 1e-6), torch.ones_like(n))
            x_adv = torch.clamp((x64 + d * expand_as_batch(shrink, d)).to(x_adv.dtype), self.box_lo, self.box_hi)
        n = flat_norm(x_adv.double() - x64, "l2")
        return torch.where(expand_as_batch(n > self.eps, x_adv), self.x, x_adv)


def expand_as_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped to broadcast against the batch ``like``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}")


def distances(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Exact per-sample distances in float64 (what the report and the soundness check use)."""
    return flat_norm(x_adv.double() - x.double(), norm)
