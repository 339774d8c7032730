"""FGSM (Goodfellow et al. 2015): one full-size step along the steepest-ascent direction of the loss."""

from __future__ import annotations

from certify.attacks.base import Attack
from certify.attacks.losses import get_loss
from certify.attacks.steps import ascent_direction, input_gradient


class FGSM(Attack):
    name = "fgsm"
    defaults = {"loss": "ce"}

    def validate(self) -> None:
        get_loss(self.params["loss"])

    def perturb(self, model, x, y, ctx):
        ctx.step()
        _, _, grad = input_gradient(model, x, y, get_loss(self.params["loss"]))
        return ctx.feasible.project(x + ctx.eps * ascent_direction(grad, ctx.norm))
