"""The box-constrained L-BFGS attack of Szegedy et al. 2013 ("Intriguing properties of neural networks").

Minimise c * ||r||^2 + CE(x + r, target) subject to x + r in the input box, with scipy's L-BFGS-B, searching c per
sample (the largest c whose solution is still misclassified gives the smallest perturbation). The squared norm keeps
the objective smooth at r = 0. The target is the most likely wrong class at x (an untargeted use of the attack).
The whole batch is one scipy problem: the objective is a sum of per-sample terms, so samples do not interact.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from certify.attacks.base import Attack
from certify.attacks.losses import cross_entropy, misclassified
from certify.attacks.minimal import ConstantSearch, Smallest


class LBFGS(Attack):
    name = "lbfgs"
    norms = ("l2",)
    minimal = True
    defaults = {"iterations": 50, "binary_steps": 6, "c_init": 1.0}

    def validate(self) -> None:
        self._positive_int("iterations", "binary_steps")
        self._positive_float("c_init")

    def perturb(self, model, x, y, ctx):
        p = self.params
        with torch.no_grad():
            target = model(x).scatter(1, y[:, None], float("-inf")).argmax(dim=1)
        lo = ctx.feasible.box_lo.double().cpu().numpy().ravel()
        hi = ctx.feasible.box_hi.double().cpu().numpy().ravel()
        x0 = x.double().cpu().numpy().ravel()
        best = Smallest(x, "l2")
        search = ConstantSearch(x.shape[0], p["c_init"], x.device, c_weights_distance=True)
        for _ in range(p["binary_steps"]):
            c = search.c.to(x.dtype)

            def objective(flat: np.ndarray, c: torch.Tensor = c) -> tuple[float, np.ndarray]:
                ctx.step()
                with torch.enable_grad():
                    xa = torch.as_tensor(flat, device=x.device).to(x.dtype).reshape(x.shape).requires_grad_(True)
                    r = (xa - x).flatten(1)
                    value = (c * r.square().sum(dim=1) + cross_entropy(model(xa), target)).sum()
                    (grad,) = torch.autograd.grad(value, xa)
                return float(value.detach()), grad.double().cpu().numpy().ravel()

            result = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                              options={"maxiter": p["iterations"]})
            with torch.no_grad():
                x_adv = torch.as_tensor(result.x, device=x.device).to(x.dtype).reshape(x.shape)
                x_adv = ctx.feasible.clip_box(x_adv)
                succeeded = best.offer(x_adv, misclassified(model(x_adv), y))
            search.update(succeeded)
        return best.refined(model, y)
