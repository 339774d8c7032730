"""Lipschitz bounds: guaranteed operator-norm bounds for layers and whole networks, and certified radii."""

from certify.lipschitz.bound import LayerBound
from certify.lipschitz.certificate import certificate, certified_radii, network_bound
from certify.lipschitz.network import Activation, Combine, Linear, LipschitzContext, pair_bounds

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
