"""Per-sample attack losses on logits; every one is maximised by the attacker (higher = closer to a mistake)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true, other


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best wrong logit minus the true logit (Carlini & Wagner's f6): positive exactly when misclassified."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): the margin scaled by z_pi1 - z_pi3, so it is invariant to
    shifting and rescaling the logits. With fewer than 3 classes the plain margin is used."""
    if logits.shape[1] < 3:
        return margin(logits, y)
    ordered = logits.sort(dim=1, descending=True).values
    return margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name):
    """A loss by name, or a callable loss as is (one that has its own success test: see :func:`success_test`)."""
    if callable(name):
        return name
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; one of {', '.join(LOSSES)}") from None


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1) != y


def success_test(loss_fn):
    """What an attack with this loss is after: the loss's own ``success(logits, y)`` if it has one (an objective
    other than misclassification, such as a property's unsafe set), else misclassification."""
    return getattr(loss_fn, "success", misclassified)
