"""Lipschitz constants of the non-dense layers: activations, pooling, normalisation, softmax, data movement.

Every constant is an operator norm of the layer on flattened per-sample tensors (L2 -> L2 unless ``norm="linf"``)
and every returned ``upper`` is guaranteed: closed forms are evaluated in float64 and pushed up by
:func:`round_up`; constants found by a one-dimensional search carry an explicit search margin. ``lower`` is a value
the layer attains (or approaches), so ``upper / lower`` is the honest slack of each row.

Scalar activations act elementwise, so their Jacobian is ``diag(f'(x_i))`` whose L2 and L-inf operator norms are
both ``max_i |f'(x_i)|``: the constant is ``sup_t |f'(t)|`` in either norm, and it is attained or approached. Each
activation declares its own slope range beside its forward (``certify.ops``); the ranges found by a search live
here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from certify.errors import ModelRejected
from certify.lipschitz.bound import LayerBound

#: Relative margin put on every float64 evaluation of a closed form (a few operations, errors of a few ulps).
REL_MARGIN = 1e-12
#: Margin on constants found by a 1-D grid search: grid step 1e-6 times sup|f''| <= 2 on the searched bracket.
SEARCH_MARGIN = 1e-5


class NonFiniteBound(ModelRejected):
    """A bound computation met NaN (a NaN constant, BatchNorm with var + eps < 0...): an error, never a bound."""

    def __init__(self, message: str):
        super().__init__("non_finite_bound", message)


def finite(value: float, what: str = "a bound") -> float:
    """``value`` itself, or :class:`NonFiniteBound` when it is NaN (``max`` over NaN, ``NaN > 0`` being false,
    would otherwise turn it into 0)."""
    if math.isnan(value):
        raise NonFiniteBound(f"{what} is NaN")
    return value


def round_up(value: float, rel: float = REL_MARGIN) -> float:
    """``value`` pushed up by a relative margin (and one ulp), so a float64 evaluation stays an upper bound."""
    return float(np.nextafter(finite(float(value)) * (1.0 + rel), math.inf))


def unbounded(reason: str, norm: str = "l2") -> LayerBound:
    """No finite global constant exists: the network bound becomes ``None`` and carries ``reason``."""
    return LayerBound(upper=None, lower=None, method="unbounded", reason=reason, norm=norm)


def exact_constant(value: float, method: str = "constant", norm: str = "l2", lower: float | None = None) -> LayerBound:
    """A constant known in closed form; ``lower`` defaults to the value itself (attained or approached)."""
    value = finite(float(value))
    return LayerBound(upper=round_up(value) if value > 0 else 0.0, lower=value if lower is None else lower,
                      method=method, exact=True, norm=norm)


# --------------------------------------------------------------------------------------------------------------
# scalar activations


@dataclass(frozen=True)
class Slope:
    """The range ``[lo, hi]`` of ``f'`` for a scalar activation ``f``; its Lipschitz constant is max(|lo|, |hi|).

    ECLipsE-style composition needs the range itself (slope-restricted activations), not only the constant.
    """

    lo: float
    hi: float

    @property
    def lipschitz(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _sup_abs_derivative(fprime, lo: float = -12.0, hi: float = 12.0) -> tuple[float, float]:
    """``(max |f'|, min f')`` of a smooth activation by a coarse scan refined on a 1e-6 grid around each extremum.

    The smooth activations searched here (GELU, SiLU, Mish) have ``f'`` within 1e-4 of 0 or 1 outside
    [-12, 12] and ``|f''| <= 2`` everywhere, so the refined grid maximum plus ``SEARCH_MARGIN`` bounds the supremum.
    """
    coarse = np.linspace(lo, hi, 24001)
    values = fprime(coarse)
    best, lowest = 0.0, math.inf
    for index in (int(np.argmax(values)), int(np.argmin(values))):
        fine = np.linspace(coarse[max(index - 1, 0)], coarse[min(index + 1, coarse.size - 1)], 2001)
        fv = fprime(fine)
        best = max(best, float(np.max(np.abs(fv))))
        lowest = min(lowest, float(np.min(fv)))
    return best + SEARCH_MARGIN, lowest - SEARCH_MARGIN


def _phi(t):
    return np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _gelu_prime(t):
    """d/dt [t Phi(t)] = Phi(t) + t phi(t); f'' = phi(t)(2 - t^2) vanishes at t = +-sqrt(2)."""
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(t, dtype=np.float64) / math.sqrt(2.0)))
    return cdf + t * _phi(t)


def _gelu_tanh_prime(t):
    c = math.sqrt(2 / math.pi)
    u = c * (t + 0.044715 * t**3)
    th = np.tanh(u)
    return 0.5 * (1 + th) + 0.5 * t * (1 - th * th) * c * (1 + 3 * 0.044715 * t * t)


def _sigmoid(t):
    return 0.5 * (1 + np.tanh(0.5 * t))


def _silu_prime(t):
    """d/dt [t s(t)] = s(1 + t(1 - s)); f'' = s(1-s)(2 - t tanh(t/2)) vanishes at t = +-2.3994 only."""
    s = _sigmoid(t)
    return s * (1 + t * (1 - s))


def _mish_prime(t):
    """d/dt [t tanh(softplus t)] = tanh(sp) + t s(t) (1 - tanh(sp)^2)."""
    th = np.tanh(np.logaddexp(0.0, t))
    return th + t * _sigmoid(t) * (1 - th * th)


#: GELU (exact form): sup f' = Phi(sqrt 2) + sqrt(2) phi(sqrt 2) ~ 1.1289 at t = sqrt(2); inf f' ~ -0.1289.
_GELU_MAX = float(_gelu_prime(np.array(math.sqrt(2.0))))
GELU_SLOPE = Slope(-round_up(_GELU_MAX - 1.0, 1e-9), round_up(_GELU_MAX))
#: SiLU / Swish: max f' ~ 1.0998 at t ~ 2.3994, min ~ -0.0998 at t ~ -2.3994 (f'(t) + f'(-t) = 1).
SILU_SLOPE = Slope(*reversed(_sup_abs_derivative(_silu_prime)))
#: Mish: max f' ~ 1.0885 (t ~ 1.22), min ~ -0.1104 (t ~ -1.19); found by the refined scan.
MISH_SLOPE = Slope(*reversed(_sup_abs_derivative(_mish_prime)))
#: GELU with the tanh approximation (opset 20 ``approximate="tanh"``).
GELU_TANH_SLOPE = Slope(*reversed(_sup_abs_derivative(_gelu_tanh_prime)))


# --------------------------------------------------------------------------------------------------------------
# data movement and diagonal maps


def selection_bound(multiplicity: int, norm: str = "l2", method: str = "selection") -> LayerBound:
    """A map whose Jacobian rows each pick one input (max-pooling, reflect/edge pads, gathers).

    ``||J||_2^2 <= ||J||_1 ||J||_inf = multiplicity * 1``, attained by the input read ``multiplicity`` times
    (a one-hot input there). In L-inf every row has a single 1: constant 1.
    """
    if norm == "linf":
        return exact_constant(1.0 if multiplicity > 0 else 0.0, method=method, norm=norm)
    return exact_constant(math.sqrt(multiplicity), method=method, norm=norm)


def scale_bound(scale, norm: str = "l2") -> LayerBound:
    """A diagonal map ``x -> s * x`` (BatchNorm at inference, Mul/Div by a constant): max |s|, exact, the same in
    both norms (diagonal Jacobian)."""
    values = np.abs(np.asarray(scale, dtype=np.float64))
    if np.isnan(values).any():
        raise NonFiniteBound("a scale factor is NaN (a NaN constant, or BatchNorm with var + epsilon < 0)")
    value = float(values.max()) if values.size else 0.0
    return exact_constant(value, method="diagonal", norm=norm)
