"""The one small interface every attack implements, and the context an attack runs in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from certify.attacks.box import Feasible


@dataclass
class AttackContext:
    """What one batch of an attack needs besides the model and data.

    ``step()`` is called once per attack iteration; it raises ``certify.tracker.Cancelled`` when the run is
    cancelled, so a cancelled run stops within one step.
    """

    feasible: Feasible
    generator: torch.Generator
    step: Callable[[], None]

    @property
    def norm(self) -> str:
        return self.feasible.norm

    @property
    def eps(self) -> float | None:
        return self.feasible.eps


class Attack:
    """An attack: configured once with its parameters, then run batch by batch.

    ``perturb(model, x, y, ctx)`` returns adversarial candidates for the batch (same shape as ``x``). Bounded
    attacks search inside ``ctx.feasible`` (eps-ball and box); minimal attacks (``minimal = True``) ignore eps and
    return the smallest misclassified point they find inside the box, or ``x`` where they found none. The caller
    checks every candidate (misclassified, inside box and ball in float64); an attack never has to be trusted.
    """

    name: str = ""
    norms: tuple[str, ...] = ("l2", "linf")
    minimal: bool = False
    gradient_free: bool = False
    defaults: dict = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.defaults)) or 'none'}")
        self.params = {**self.defaults, **params}
        self.validate()

    def validate(self) -> None:
        """Check ``self.params``; raise ValueError naming the parameter."""

    def _positive_int(self, *names: str) -> None:
        for name in names:
            value = self.params[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{self.name}: {name} must be a positive integer, got {value!r}")

    def _positive_float(self, *names: str) -> None:
        for name in names:
            value = self.params[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{self.name}: {name} must be a positive number, got {value!r}")

    def describe(self) -> dict:
        return {"name": self.name, "minimal": self.minimal, "gradient_free": self.gradient_free,
                "params": dict(self.params)}

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        raise NotImplementedError
