"""PGD (Madry et al. 2018): projected steepest ascent from a random start, with restarts and a step schedule."""

from __future__ import annotations

import torch

from certify.attacks.base import Attack, AttackContext
from certify.attacks.box import expand_as_batch
from certify.attacks.losses import get_loss, success_test
from certify.attacks.restarts import ActiveSet, with_restarts
from certify.attacks.steps import SCHEDULES, ascent_direction, input_gradient, random_in_ball, step_size


class PGD(Attack):
    """``rel_step`` is the step size as a fraction of eps (2.5/steps, as Madry et al., when None).

    ``early_stop`` drops samples once misclassified (checked every ``check_every`` steps) — it changes only the
    cost, never which samples are broken.
    """

    name = "pgd"
    defaults = {"steps": 20, "rel_step": None, "restarts": 1, "random_start": True, "loss": "ce",
                "schedule": "constant", "early_stop": True, "check_every": 4}

    def validate(self) -> None:
        self._positive_int("steps", "restarts", "check_every")
        if self.params["rel_step"] is not None:
            self._positive_float("rel_step")
        get_loss(self.params["loss"])
        if self.params["schedule"] not in SCHEDULES:
            raise ValueError(f"pgd: schedule must be one of {', '.join(SCHEDULES)}")

    def perturb(self, model, x, y, ctx):
        return with_restarts(lambda xs, ys, c, r: self._once(model, xs, ys, c), x, y, ctx, self.params["restarts"])

    def _once(self, model, x, y, ctx: AttackContext):
        p = self.params
        steps, norm, eps = p["steps"], ctx.norm, ctx.eps
        base = (p["rel_step"] if p["rel_step"] is not None else 2.5 / steps) * eps
        loss_fn = get_loss(p["loss"])
        success = success_test(loss_fn)
        x_adv = ctx.feasible.project(random_in_ball(x, eps, norm, ctx.generator)) if p["random_start"] else x
        active = ActiveSet(x, y, ctx)
        for i in range(steps):
            ctx.step()
            _, logits, grad = input_gradient(model, x_adv, active.y, loss_fn)
            # A misclassified sample gets a zero step: it stays at its first misclassified point, which costs
            # nothing extra (the per-sample step size replaces the scalar one).
            moving = ~success(logits, active.y)
            size = step_size(p["schedule"], base, i, steps) * moving.to(x_adv.dtype)
            x_adv = active.feasible.project(x_adv + expand_as_batch(size, x_adv) * ascent_direction(grad, norm))
            if p["early_stop"] and (i + 1) % p["check_every"] == 0:
                active.record(x_adv, ~moving)
                kept = active.shrink(x_adv)
                if kept is None:
                    return active.finish()
                (x_adv,) = kept
        with torch.no_grad():
            active.record(x_adv, success(model(x_adv), active.y))
        return active.finish(x_adv)
