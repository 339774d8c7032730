"""Carlini & Wagner L2 (2017): minimise ||delta||^2 + c * max(z_y - max_{j != y} z_j, -kappa) with Adam in
tanh-space (which keeps every iterate inside the box), bisecting c per sample.

``lr`` is in input units: Adam's step in tanh-space is lr divided by the box's half-width, so the attack behaves the
same for a box [0, 1] and a box [-100, 100] around the same data. It decays linearly to 0 within each search step,
so Adam settles on the boundary instead of oscillating around it.
"""

from __future__ import annotations

import torch

from certify.attacks.base import Attack
from certify.attacks.box import flat_norm
from certify.attacks.losses import margin, misclassified
from certify.attacks.minimal import ConstantSearch, Smallest


class CarliniWagnerL2(Attack):
    name = "cw"
    norms = ("l2",)
    minimal = True
    defaults = {"steps": 100, "binary_steps": 6, "c_init": 1.0, "lr": 0.1, "kappa": 0.0, "abort_early": True}

    def validate(self) -> None:
        self._positive_int("steps", "binary_steps")
        self._positive_float("c_init", "lr")
        if not self.params["kappa"] >= 0:
            raise ValueError("cw: kappa must be >= 0")

    def perturb(self, model, x, y, ctx):
        p = self.params
        lo, hi = ctx.feasible.box_lo, ctx.feasible.box_hi
        scale = (hi - lo) / 2

        def to_input(w):
            return lo + scale * (torch.tanh(w) + 1)

        w0 = torch.atanh(((x - lo) / scale - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        best = Smallest(x, "l2")
        search = ConstantSearch(x.shape[0], p["c_init"], x.device, c_weights_distance=False)
        for _ in range(p["binary_steps"]):
            c = search.c.to(x.dtype)
            succeeded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            w = w0.clone().requires_grad_(True)
            lr = p["lr"] / float(scale.mean())
            opt = torch.optim.Adam([w], lr=lr)
            previous = float("inf")
            for i in range(p["steps"]):
                ctx.step()
                opt.param_groups[0]["lr"] = lr * (1 - i / p["steps"])
                with torch.enable_grad():
                    x_adv = to_input(w)
                    logits = model(x_adv)
                    dist = flat_norm(x_adv - x, "l2").square()
                    f = (-margin(logits, y)).clamp_min(-p["kappa"])
                    loss = (dist + c * f).sum()
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                succeeded |= best.offer(x_adv, misclassified(logits.detach(), y), dist.detach().sqrt())
                if p["abort_early"] and (i + 1) % max(1, p["steps"] // 10) == 0:
                    if loss.item() > previous * 0.9999:
                        break
                    previous = loss.item()
            search.update(succeeded)
        return best.refined(model, y)
