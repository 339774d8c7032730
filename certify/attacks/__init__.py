"""Adversarial attacks over one small interface (:class:`certify.attacks.base.Attack`), and the presets.

Bounded attacks (FGSM, PGD, APGD-CE, APGD-DLR, Square) search the eps-ball intersected with the input box; minimal
attacks (Carlini-Wagner L2, DeepFool, L-BFGS) return the smallest misclassified point they find in the box.
"""

from __future__ import annotations

from certify.attacks.apgd import APGDCE, APGDDLR
from certify.attacks.base import Attack, AttackContext
from certify.attacks.box import NORMS, Box
from certify.attacks.cw import CarliniWagnerL2
from certify.attacks.deepfool import DeepFool
from certify.attacks.fgsm import FGSM
from certify.attacks.lbfgs import LBFGS
from certify.attacks.pgd import PGD
from certify.attacks.square import Square
from certify.defaults import ATTACK_PRESETS

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, PGD, APGDCE, APGDDLR, Square, CarliniWagnerL2,
                                                                 DeepFool, LBFGS)}

# The presets that run attacks (defined with the job defaults); what ran is recorded from the built attacks.
PRESETS: dict[str, list[tuple[str, dict]]] = {name: plan for name, plan in ATTACK_PRESETS.items() if plan}


def build_attack(name: str, **params) -> Attack:
    """An attack by name with its parameters; ValueError for an unknown name or parameter."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; one of {', '.join(ATTACKS)}") from None
    return cls(**params)


def resolve_attacks(attacks) -> list[Attack]:
    """A preset name, or a list of attack names / (name, params) pairs / Attack instances, as built attacks."""
    if isinstance(attacks, str):
        if attacks not in PRESETS:
            raise ValueError(f"unknown attack preset {attacks!r}; one of {', '.join(PRESETS)}")
        return [build_attack(name, **params) for name, params in PRESETS[attacks]]
    if isinstance(attacks, Attack):
        attacks = [attacks]
    try:
        items = list(attacks)
    except TypeError:
        raise ValueError("attacks must be a preset name or a list of attack names") from None
    if not items:
        raise ValueError("attacks must not be empty")
    built = []
    for item in items:
        if isinstance(item, Attack):
            built.append(item)
        elif isinstance(item, str):
            built.append(build_attack(item))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict):
            built.append(build_attack(item[0], **item[1]))
        else:
            raise ValueError(f"not an attack: {item!r}")
    return built


__all__ = ["ATTACKS", "NORMS", "PRESETS", "Attack", "AttackContext", "Box", "build_attack", "resolve_attacks"]
