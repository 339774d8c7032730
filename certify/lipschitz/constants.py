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
import time
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
# softmax family


def softmax_bound(axis_size: int, norm: str = "l2") -> LayerBound:
    """Softmax along an axis: constant 1/2 in L2 and in L-inf.

    Gao & Pavel (2017, "On the properties of the softmax function", Prop. 4) show softmax is 1-Lipschitz; the
    exact constant is 1/2. The Jacobian is ``J = diag(p) - p p^T`` (symmetric PSD) and for a unit ``v``,
    ``v^T J v = Var_p(v) <= (max v - min v)^2 / 4 <= 2 (max v^2 + min v^2)/4 <= 1/2`` (Popoviciu), approached by
    ``p -> (1/2, 1/2, 0, ...)``, ``v = (1, -1, 0, ...)/sqrt 2``. In L-inf the row sums are
    ``2 p_i (1 - p_i) <= 1/2``. Slices along the axis are independent (block-diagonal Jacobian): the same constant.
    """
    if axis_size <= 1:
        return exact_constant(0.0, norm=norm)
    return exact_constant(0.5, norm=norm)


def log_softmax_bound(axis_size: int, norm: str = "l2") -> LayerBound:
    """LogSoftmax: Jacobian ``I - 1 p^T``, an oblique projection whose L2 norm is ``||1|| ||p|| <= sqrt(n)``
    (approached as p -> a vertex); L-inf row sums ``2 (1 - p_i) <= 2``."""
    n = max(int(axis_size), 1)
    if n == 1:
        return exact_constant(0.0, norm=norm)
    return exact_constant(math.sqrt(n) if norm == "l2" else 2.0, norm=norm)


# --------------------------------------------------------------------------------------------------------------
# pooling and data movement


def _window_counts(size: int, out: int, kernel: int, stride: int, pad_begin: int, dilation: int) -> np.ndarray:
    """For every input position along one axis, how many pooling windows read it (padding excluded)."""
    counts = np.zeros(size, dtype=np.int64)
    for o in range(out):
        start = o * stride - pad_begin
        for t in range(kernel):
            p = start + t * dilation
            if 0 <= p < size:
                counts[p] += 1
    return counts


def selection_bound(multiplicity: int, norm: str = "l2", method: str = "selection") -> LayerBound:
    """A map whose Jacobian rows each pick one input (max-pooling, reflect/edge pads, gathers).

    ``||J||_2^2 <= ||J||_1 ||J||_inf = multiplicity * 1``, attained by the input read ``multiplicity`` times
    (a one-hot input there). In L-inf every row has a single 1: constant 1.
    """
    if norm == "linf":
        return exact_constant(1.0 if multiplicity > 0 else 0.0, method=method, norm=norm)
    return exact_constant(math.sqrt(multiplicity), method=method, norm=norm)


def _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations):
    spatial = list(input_shape[1:])
    nd = len(spatial)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    out = list(output_shape[1:])
    return [(spatial[i], out[i], int(kernel[i]), int(strides[i]), int(pads[i]), int(dilations[i])) for i in range(nd)]


def maxpool_bound(input_shape, output_shape, kernel, strides=None, pads=None, dilations=None,
                  norm: str = "l2") -> LayerBound:
    """Max-pooling: ``sqrt(max number of windows reading one input)``; for stride <= kernel without padding or
    dilation that is ``sqrt(prod ceil(k_i / s_i))``. Overlapping windows (3x3 stride 2: 2 windows per axis) give 2,
    not 1: the input that is the maximum of all its windows moves all of those outputs at once. Exact.

    ``input_shape`` / ``output_shape`` are per-sample ``(C, *spatial)``.
    """
    started = time.perf_counter()
    multiplicity = 1
    for size, out, k, s, pb, d in _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations):
        multiplicity *= int(_window_counts(size, out, k, s, pb, d).max(initial=0))
    bound = selection_bound(multiplicity, norm, method="max-pool multiplicity")
    bound.ms = (time.perf_counter() - started) * 1e3
    return bound


def _average_matrix(size: int, out: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                    count_include_pad: bool) -> np.ndarray:
    """The 1-D averaging matrix of one axis (PyTorch/ONNX divisor rules: with ``count_include_pad`` the divisor
    counts positions inside the padded range, else only real inputs)."""
    a = np.zeros((out, size))
    for o in range(out):
        start = o * stride - pad_begin
        positions = [start + t * dilation for t in range(kernel)]
        inside = [p for p in positions if 0 <= p < size]
        if count_include_pad:
            divisor = sum(1 for p in positions if -pad_begin <= p < size + pad_end)
        else:
            divisor = len(inside)
        for p in inside:
            a[o, p] += 1.0 / max(divisor, 1)
    return a


def avgpool_bound(input_shape, output_shape, kernel, strides=None, pads=None, dilations=None,
                  count_include_pad: bool = False, norm: str = "l2") -> LayerBound:
    """Average pooling is linear and separable: per channel it is the Kronecker product of one 1-D averaging
    matrix per spatial axis, so its norm is the product of the 1-D norms (exact, from small SVDs; L-inf: the
    product of the max row sums). The lower bound is attained by the Kronecker product of the top singular
    vectors."""
    started = time.perf_counter()
    nd = len(input_shape) - 1
    pads_list = list(pads or [0] * (2 * nd))
    upper = lower = 1.0
    for i, (size, out, k, s, pb, d) in enumerate(
            _pool_geometry(input_shape, output_shape, kernel, strides, pads, dilations)):
        a = _average_matrix(size, out, k, s, pb, pads_list[i + nd], d, count_include_pad)
        value = float(np.abs(a).sum(axis=1).max()) if norm == "linf" else float(np.linalg.norm(a, 2))
        upper *= round_up(value, 1e-12 * (size + out))
        lower *= value
    return LayerBound(upper=round_up(upper), lower=lower * (1 - 1e-12), method="kronecker-svd", exact=True,
                      norm=norm, ms=(time.perf_counter() - started) * 1e3)


def global_avgpool_bound(input_shape, norm: str = "l2") -> LayerBound:
    """Mean over all spatial positions of each channel: ``1/sqrt(HW...)`` in L2 (row vectors of 1/n), 1 in L-inf."""
    n = int(np.prod(input_shape[1:])) if len(input_shape) > 1 else 1
    return exact_constant(1.0 if norm == "linf" else 1.0 / math.sqrt(max(n, 1)), method="constant", norm=norm)


# --------------------------------------------------------------------------------------------------------------
# normalisation


def scale_bound(scale, norm: str = "l2") -> LayerBound:
    """A diagonal map ``x -> s * x`` (BatchNorm at inference, Mul/Div by a constant): max |s|, exact, the same in
    both norms (diagonal Jacobian)."""
    values = np.abs(np.asarray(scale, dtype=np.float64))
    if np.isnan(values).any():
        raise NonFiniteBound("a scale factor is NaN (a NaN constant, or BatchNorm with var + epsilon < 0)")
    value = float(values.max()) if values.size else 0.0
    return exact_constant(value, method="diagonal", norm=norm)


def batchnorm_scale(gamma, var, eps: float) -> np.ndarray:
    """Per-channel slope ``gamma / sqrt(var + eps)`` of inference BatchNorm (float64 from the stored params)."""
    gamma = np.asarray(gamma, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # var + eps <= 0 is reported by the bound, not warned
        return gamma / np.sqrt(var + float(eps))


def batchnorm_bound(gamma, var, eps: float, norm: str = "l2") -> LayerBound:
    """BatchNorm when it is not fused into the preceding convolution: max |gamma| / sqrt(var + eps)."""
    return scale_bound(batchnorm_scale(gamma, var, eps), norm)


def lrn_bound(size: int, alpha: float, beta: float, bias: float, norm: str = "l2") -> LayerBound:
    """Local response normalisation ``y_c = x_c / S_c^beta``, ``S_c = k + (alpha/n) sum_{j in N(c)} x_j^2``.

    Derivation of a guaranteed bound on ``sup ||J||`` (k = bias > 0, beta > 0, alpha > 0, n = size, channel
    windows N(c) of n channels). With ``w = sqrt(alpha/n) x`` and ``t_c = sum_{N(c)} w_j^2 = S_c - k``::

        J = D - 2 beta E,  D = diag(S_c^-beta),  E_cj = S_c^(-beta-1) w_c w_j [j in N(c)].

    ``||D|| <= k^-beta``. For unit v, Cauchy-Schwarz gives ``|(E v)_c| <= S_c^(-beta-1) |w_c| sqrt(t_c) ||v_N(c)||
    <= g(S_c) ||v_N(c)||`` with ``g(S) = (S - k) S^(-beta-1)`` (as ``w_c^2 <= t_c``), and ``g`` peaks at
    ``S = k (beta+1)/beta`` with ``g* = k^-beta beta^beta / (beta+1)^(beta+1)``. Every channel lies in at most n
    windows, so ``||E v||^2 <= g*^2 n``. Hence::

        ||J|| <= k^-beta (1 + 2 sqrt(n) (beta / (beta+1))^(beta+1)).

    The same bound holds for the L-inf row sums (``|w_c| sum_{N(c)} |w_j| <= sqrt(n) t_c``). At x = 0 the Jacobian
    is ``k^-beta I``: that is the lower bound. For AlexNet (n=5, beta=0.75, k=1) the bound is about 2.015.
    """
    if bias > 0 and beta == 0:
        return exact_constant(1.0, method="lrn (identity)", norm=norm)
    if not (bias > 0 and beta > 0 and alpha >= 0 and size >= 1):  # alpha < 0: S_c reaches 0 at finite x
        return unbounded(f"LRN with alpha={alpha}, bias={bias}, beta={beta}: the denominator can vanish", norm)
    if beta * math.log(1.0 / bias) > 700:  # k^-beta beyond float64
        return unbounded(f"LRN with bias={bias}, beta={beta}: the slope bias^-beta overflows", norm)
    if alpha == 0:  # y = x / k^beta
        return exact_constant(bias**-beta, method="lrn (scale)", norm=norm)
    base = bias**-beta
    value = base * (1 + 2 * math.sqrt(size) * (beta / (beta + 1)) ** (beta + 1))
    return LayerBound(upper=round_up(value), lower=base, method="lrn closed form", norm=norm)


def layernorm_bound(axis_size: int, scale, eps: float, norm: str = "l2") -> LayerBound:
    """LayerNorm ``y = gamma (x - mean) / sqrt(var + eps)``: its Jacobian at centred x with variance ~0 is
    ``gamma (I - 11^T/n) / sqrt(eps)``, so ``max|gamma| / sqrt(eps)`` is approached; a guaranteed bound is
    ``max|gamma| / sqrt(eps)`` (the projection has norm 1 and the normalisation only shrinks it further:
    ``J = (gamma/sigma) (P - u u^T)`` with ``P`` the centring projection, ``u`` the normalised centred x, and
    ``||P - uu^T|| <= 1``). Tiny eps makes it useless; below 1e-12 it is reported as unbounded."""
    if eps <= 1e-12:
        return unbounded(f"LayerNorm with eps={eps}: slope 1/sqrt(eps) is effectively unbounded", norm)
    gamma = np.abs(np.asarray(scale if scale is not None else 1.0, dtype=np.float64))
    value = float(gamma.max()) / math.sqrt(eps)
    if norm == "linf":  # ||P||_inf <= 2 and ||c u u^T||_inf <= max|u_i| ||u||_1 <= sqrt(n)
        return LayerBound(upper=round_up(value * (2.0 + math.sqrt(axis_size))), lower=None,
                          method="layernorm closed form", norm=norm)
    return LayerBound(upper=round_up(value), lower=value, method="layernorm closed form", exact=True, norm=norm)
