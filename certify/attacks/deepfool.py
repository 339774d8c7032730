"""DeepFool (Moosavi-Dezfooli et al. 2016): repeatedly step to the nearest linearised decision boundary.

For class k with f_k = z_k - z_y and w_k = grad f_k, the boundary is |f_k| / ||w_k||_q away (q the dual norm:
2 for L2, 1 for L-inf); the step goes to the nearest one. For a linear classifier one step lands exactly on the
closest boundary, so with the small overshoot the result is the exact minimal perturbation times (1 + overshoot).
"""

from __future__ import annotations

import torch

from certify.attacks.base import Attack
from certify.attacks.box import expand_as_batch, flat_norm
from certify.attacks.losses import misclassified
from certify.attacks.minimal import Smallest


class DeepFool(Attack):
    name = "deepfool"
    minimal = True
    defaults = {"steps": 50, "overshoot": 0.02, "candidates": 10}

    def validate(self) -> None:
        self._positive_int("steps", "candidates")
        if not self.params["overshoot"] >= 0:
            raise ValueError("deepfool: overshoot must be >= 0")

    def perturb(self, model, x, y, ctx):
        p = self.params
        norm, feasible = ctx.norm, ctx.feasible
        with torch.no_grad():
            logits = model(x)
        k = min(p["candidates"], logits.shape[1])
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices if k > 1 else None
        best = Smallest(x, norm)
        if others is None:
            return best.refined(model, y)
        total = torch.zeros_like(x)
        x_adv = x
        for _ in range(p["steps"]):
            ctx.step()
            step, logits = self._step(model, x_adv, y, others, norm)
            wrong = best.offer(x_adv, misclassified(logits, y))
            if bool(wrong.all()):
                break
            total = total + torch.where(expand_as_batch(wrong, step), 0.0, step)
            x_adv = feasible.clip_box(x + (1 + p["overshoot"]) * total)
        with torch.no_grad():
            best.offer(x_adv, misclassified(model(x_adv), y))
        return best.refined(model, y)

    @staticmethod
    def _step(model, x_adv, y, others, norm):
        """The step to the nearest linearised boundary among the candidate classes, and the logits at x_adv."""
        with torch.enable_grad():
            xg = x_adv.detach().requires_grad_(True)
            logits = model(xg)
            true = logits.gather(1, y[:, None])[:, 0]
            best_dist = torch.full((x_adv.shape[0],), float("inf"), device=x_adv.device, dtype=x_adv.dtype)
            best_step = torch.zeros_like(x_adv)
            for j in range(others.shape[1]):
                f = logits.gather(1, others[:, j:j + 1])[:, 0] - true
                (w,) = torch.autograd.grad(f.sum(), xg, retain_graph=j + 1 < others.shape[1])
                dual = flat_norm(w, "l1" if norm == "linf" else "l2").clamp_min(1e-12)
                dist = (f.detach().abs() + 1e-4) / dual
                direction = w.sign() if norm == "linf" else w / expand_as_batch(dual, w)
                closer = dist < best_dist
                best_step = torch.where(expand_as_batch(closer, w), direction * expand_as_batch(dist, w), best_step)
                best_dist = torch.where(closer, dist, best_dist)
        return best_step, logits.detach()
