"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): PGD with momentum and a step size that halves at checkpoints when progress stalls.

Checkpoints follow the paper: first after 22% of the iterations, then at shrinking intervals (by 3%, at least 6%).
At a checkpoint a sample's step halves, and it restarts from its best point, if fewer than ``rho`` of the steps since
the last checkpoint increased the loss, or if its step was not reduced last time and its best loss did not improve.
APGD-CE uses cross-entropy, APGD-DLR the Difference-of-Logits-Ratio loss.
"""

from __future__ import annotations

import torch

from certify.attacks.base import Attack, AttackContext
from certify.attacks.box import expand_as_batch
from certify.attacks.losses import get_loss, success_test
from certify.attacks.restarts import ActiveSet, with_restarts
from certify.attacks.steps import ascent_direction, input_gradient, random_in_ball


def checkpoint_intervals(steps: int) -> tuple[int, int, int]:
    """(first interval, decrement, minimum interval) in iterations."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


class APGD(Attack):
    name = "apgd"
    defaults = {"steps": 100, "restarts": 1, "loss": "ce", "rho": 0.75, "momentum": 0.75, "early_stop": True}

    def validate(self) -> None:
        self._positive_int("steps", "restarts")
        self._positive_float("rho", "momentum")
        if self.params["momentum"] > 1 or self.params["rho"] > 1:
            raise ValueError(f"{self.name}: rho and momentum must lie in (0, 1]")
        get_loss(self.params["loss"])

    def perturb(self, model, x, y, ctx):
        return with_restarts(lambda xs, ys, c, r: self._once(model, xs, ys, c), x, y, ctx, self.params["restarts"])

    def _once(self, model, x, y, ctx: AttackContext):
        p = self.params
        norm, eps, steps = ctx.norm, ctx.eps, p["steps"]
        loss_fn = get_loss(p["loss"])
        success = success_test(loss_fn)
        active = ActiveSet(x, y, ctx)
        n = x.shape[0]
        x_adv = ctx.feasible.project(random_in_ball(x, eps, norm, ctx.generator))
        loss, logits, grad = input_gradient(model, x_adv, y, loss_fn)
        active.record(x_adv, success(logits, y))
        state = {
            "x_adv": x_adv, "x_old": x_adv, "grad": grad, "x_best": x_adv, "grad_best": grad,
            "loss_best": loss, "loss_prev": loss,
            "step": torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype),
            "increases": torch.zeros(n, device=x.device), "loss_best_last": loss,
            "reduced_last": torch.zeros(n, dtype=torch.bool, device=x.device),
        }
        interval, decrement, minimum = checkpoint_intervals(steps)
        since_check = 0
        for i in range(steps):
            ctx.step()
            s = state
            a = 1.0 if i == 0 else p["momentum"]
            step = expand_as_batch(s["step"], s["x_adv"])
            z = active.feasible.project(s["x_adv"] + step * ascent_direction(s["grad"], norm))
            x_new = active.feasible.project(s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_old"]))
            loss, logits, grad = input_gradient(model, x_new, active.y, loss_fn)
            active.record(x_new, success(logits, active.y))
            better = loss > s["loss_best"]
            rows = expand_as_batch(better, x_new)
            s.update(x_old=s["x_adv"], x_adv=x_new, grad=grad,
                     x_best=torch.where(rows, x_new, s["x_best"]), grad_best=torch.where(rows, grad, s["grad_best"]),
                     loss_best=torch.where(better, loss, s["loss_best"]),
                     increases=s["increases"] + (loss > s["loss_prev"]).float(), loss_prev=loss)
            since_check += 1
            if since_check == interval and i + 1 < steps:
                self._checkpoint(s, interval)
                since_check, interval = 0, max(interval - decrement, minimum)
                if p["early_stop"]:
                    names = list(s)
                    kept = active.shrink(*(s[k] for k in names))
                    if kept is None:
                        return active.finish()
                    state = dict(zip(names, kept))
        return active.finish(state["x_best"])

    def _checkpoint(self, s: dict, interval: int) -> None:
        oscillating = s["increases"] < self.params["rho"] * interval
        stalled = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
        reduce = oscillating | stalled
        rows = expand_as_batch(reduce, s["x_adv"])
        s.update(step=torch.where(reduce, s["step"] / 2, s["step"]),
                 x_adv=torch.where(rows, s["x_best"], s["x_adv"]), grad=torch.where(rows, s["grad_best"], s["grad"]),
                 reduced_last=reduce, loss_best_last=s["loss_best"], increases=torch.zeros_like(s["increases"]))


class APGDCE(APGD):
    name = "apgd-ce"
    defaults = {**APGD.defaults, "loss": "ce"}


class APGDDLR(APGD):
    name = "apgd-dlr"
    defaults = {**APGD.defaults, "loss": "dlr"}


