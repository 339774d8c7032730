"""Lipschitz bounds: guaranteed operator-norm bounds for layers and whole networks, and certified radii."""

from certify.lipschitz.bound import LayerBound
from certify.lipschitz.certificate import certificate, certified_radii, network_bound
from certify.lipschitz.network import pair_bounds
from certify.lipschitz.rules import Activation, Combine, Linear, LipschitzContext

__all__ = [
    "Activation",
    "Combine",
    "LayerBound",
    "Linear",
    "LipschitzContext",
    "certificate",
    "certified_radii",
    "network_bound",
    "pair_bounds",
]
