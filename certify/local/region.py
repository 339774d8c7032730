"""The input set a local certificate covers: a box, or an eps-ball intersected with the valid input range.

An L-inf ball intersected with the range is exactly a box. An L2 ball keeps its centre and radius besides its
bounding box (ball box intersected with the range): a linear function's minimum over the set is bounded below both
by the box minimum and by the ball minimum ``a . x0 - eps ||a||_2``; each is sound, the larger is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")


@dataclass
class Region:
    """``lower <= x <= upper`` (batched: shape (N, *input)); for an L2 ball also ``center`` and ``eps``."""

    lower: torch.Tensor
    upper: torch.Tensor
    center: torch.Tensor | None = None
    eps: float = 0.0
    norm: str = "linf"

    @classmethod
    def box(cls, lower, upper) -> Region:
        lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
        if lower.shape != upper.shape or bool((lower > upper).any()):
            raise ValueError("a box needs lower <= upper of one shape")
        return cls(lower, upper)

    @classmethod
    def ball(cls, x, eps: float, norm: str = "linf", input_range=(0.0, 1.0)) -> Region:
        """The ``norm`` ball of radius ``eps`` around each row of ``x``, intersected with ``input_range``."""
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        x = torch.as_tensor(x)
        lo, hi = (-float("inf"), float("inf")) if input_range is None else input_range
        lower, upper = torch.clamp(x - eps, min=lo), torch.clamp(x + eps, max=hi)
        if bool((lower > upper).any()):
            raise ValueError(f"a sample lies more than eps outside the input range {input_range}")
        if norm == "linf":
            return cls(lower, upper)
        return cls(lower, upper, center=x, eps=float(eps), norm="l2")

    def to(self, device, dtype) -> Region:
        center = None if self.center is None else self.center.to(device, dtype)
        return Region(self.lower.to(device, dtype), self.upper.to(device, dtype), center, self.eps, self.norm)

    def subset(self, index) -> Region:
        center = None if self.center is None else self.center[index]
        return Region(self.lower[index], self.upper[index], center, self.eps, self.norm)

    @property
    def midpoint(self) -> torch.Tensor:
        return self.center if self.center is not None else (self.lower + self.upper) / 2

    def minimum(self, a: torch.Tensor) -> torch.Tensor:
        """Lower bound of ``a . x`` over the region for coefficients ``a`` of shape (S, N, *input): (S, N)."""
        flat = a.flatten(2)
        lo, hi = self.lower.flatten(1), self.upper.flatten(1)
        best = (flat.clamp(min=0) * lo + flat.clamp(max=0) * hi).sum(-1)
        if self.norm == "l2":
            ball = (flat * self.center.flatten(1)).sum(-1) - self.eps * flat.norm(dim=-1)
            best = torch.maximum(best, ball)
        return best
