"""Lipschitz bounds: guaranteed operator-norm bounds for layers and whole networks."""
