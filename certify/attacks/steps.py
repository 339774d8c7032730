"""Step logic shared by the gradient attacks: ascent directions, random starts, step-size schedules."""

from __future__ import annotations

import math

import torch

from certify.attacks.box import expand_as_batch, flat_norm


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step for the norm: sign (L-inf) or the normalised gradient (L2)."""
    if norm == "linf":
        return grad.sign()
    n = flat_norm(grad, "l2").clamp_min(1e-12)
    return grad / expand_as_batch(n, grad)


def random_in_ball(x: torch.Tensor, eps, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random point of the eps-ball around ``x``: uniform per coordinate (L-inf), uniform in the ball (L2)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    g = g / expand_as_batch(flat_norm(g, "l2").clamp_min(1e-12), g)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return x + g * expand_as_batch(r * eps, g)


SCHEDULES = ("constant", "cosine", "step")


def step_size(schedule: str, base: float, i: int, steps: int) -> float:
    """Step size at iteration ``i`` of ``steps``: constant, cosine-annealed to 10% or halved at 50% and 75%."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
    if schedule == "step":
        return base * (0.5 ** ((i >= steps // 2) + (i >= 3 * steps // 4)))
    raise ValueError(f"unknown step-size schedule {schedule!r}; one of {', '.join(SCHEDULES)}")


def input_gradient(model, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per sample, logits, d sum(loss) / d x) in one forward and one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), logits.detach(), grad
