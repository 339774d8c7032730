"""Guaranteed spectral-norm upper bounds by Gram iteration, with the floating-point error accounted for.

Gram iteration (Delattre, Barthelemy, Araujo, Allauzen, ICML 2023): with G_0 = K and G_{t+1} = G_t^H G_t,
sigma_1(G_t) = sigma_1(K)^(2^t) and sigma_1 <= ||.||_F, so sigma_1(K) <= ||G_t||_F^(1/2^t), tightening with t.

Floating point. Each step rescales by an exact power of two and rounds: with P_t = H_t / 2^k_t (exact) and
H_{t+1} = fl(P_t^H P_t) = P_t^H P_t + E_t, the standard matmul bound |E_t| <= gamma_n |P_t|^H |P_t| (any summation
order, FMA or blocked; Higham, "Accuracy and Stability of Numerical Algorithms", 3.5; complex arithmetic adds a
few units, covered by the factor 2 in `matmul_gamma`) gives ||E_t||_2 <= ||E_t||_F <= gamma_n ||P_t||_F^2 =: e_t.
Since sigma_1(P^H P) = sigma_1(P)^2 exactly, Weyl's inequality gives sigma_1(P_t)^2 <= sigma_1(H_{t+1}) + e_t.
When a step also rounds P_t to a lower precision (P'_t = P_t + D_t, |D_t| <= u |P_t|), sigma_1(P_t) <=
sigma_1(P'_t) + u ||P_t||_F. Chaining these from sigma_1(H_T) <= ||H_T||_F (computed Frobenius norm inflated by its
own rounding bound) back to H_0 = K gives the bound; every operation of that backward recursion is rounded upward
(`round_up`). Underflow is covered by a tiny absolute term. The error is relative to ||P_t||_F^2, which exceeds
sigma_1(P_t)^2 by at most the rank, so the bound stays within about n^2 u of the exact recursion at each step.

The product K^H K and the first squarings are formed in float64; later squarings may run in float32
(``fast_squarings``), which costs a relative slack of about n 2^-23 sum_i (lambda_i / lambda_1)^(2^t) / 2^(t+1) at
step t: around 1e-5 for 512 x 512 random blocks once t >= 3.
"""

from __future__ import annotations

import math

import torch

U64 = 2.0**-53
U32 = 2.0**-24
# Absolute terms covering underflow. Every block is rescaled to a Frobenius norm in [0.5, 1) before each product,
# so sigma_1 of each product is at least 1 / (4 n): these terms are negligible relative to it (zero blocks are
# handled exactly). float64: at most (n + 1) * 2^-1074 per entry of a product, n < 2^30 (the squares summed in a
# Frobenius norm likewise). float32: (n + 1) * 2^-149 per entry and 2^-149 per rounded entry.
_TINY = 2.0**-900
_TINY32 = 2.0**-80
_TINY_NORM = 2.0**-450  # square root of the float64 underflow of a sum of squares
_UP = 1.0 + 4 * U64
# The first squarings see a flat spectrum (||P||_F^2 up to n sigma_1(P)^2), where float32 rounding would cost
# about n^2 2^-24 / 4; from the third on the spectrum has sharpened enough for float32 to cost ~1e-5 or less.
_EXACT_SQUARINGS = 2  # one correctly rounded float64 operation is off by at most a relative u


def matmul_gamma(n: int, u: float = U64) -> float:
    """Relative error factor of an inner product of length n (real or complex), conservatively doubled."""
    nu = 2.0 * (n + 4) * u
    if nu >= 0.5:
        raise ValueError(f"inner dimension {n} too large for a floating-point error bound")
    return nu / (1.0 - nu)


def round_up(x):
    """An upper bound of the exact value of the one float64 operation that produced ``x`` (x >= 0)."""
    return x * _UP


def frobenius_upper(h: torch.Tensor) -> torch.Tensor:
    """Per-block upper bound of the Frobenius norm of a batch (B, p, q), accumulated in float64.

    A sum of N squares in any order is within gamma_N of the exact sum; the square root halves that relative error.
    """
    parts = torch.view_as_real(h.resolve_conj()) if h.is_complex() else h.unsqueeze(-1)
    fro = torch.linalg.vector_norm(parts, dim=(-3, -2, -1), dtype=torch.float64)
    count = parts.shape[-3] * parts.shape[-2] * parts.shape[-1]
    return round_up(fro * (1.0 + matmul_gamma(count))) + _TINY_NORM


def _power_of_two_scale(fro: torch.Tensor) -> torch.Tensor:
    """Integer exponents k with fro / 2^k in [0.5, 1) (0 for zero blocks)."""
    _, exponent = torch.frexp(fro)
    return torch.where(fro > 0, exponent, torch.zeros_like(exponent))


def _chain_bound(links: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], top: torch.Tensor) -> torch.Tensor:
    """Backward recursion: sigma(H_j) <= 2^k_j (sqrt(sigma(H_{j+1}) + e_j) + d_j), rounded upward."""
    bound = top
    for exponent, e, d in reversed(links):
        root = round_up(torch.sqrt(round_up(bound + e)))
        bound = round_up(root + d) * _power_of_two(exponent)
    return bound


def _orient(blocks: torch.Tensor) -> torch.Tensor:
    """Transpose wide blocks so that the Gram matrix K^H K has the smaller side."""
    if blocks.shape[-2] < blocks.shape[-1]:
        return blocks.mH.resolve_conj()
    return blocks


def gram_bounds(
    blocks: torch.Tensor,
    *,
    steps: int = 12,
    rel_tol: float = 1e-3,
    fast_squarings: bool = True,
    floor: float = 0.0,
    prune: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block guaranteed upper bounds of sigma_1 for a batch (B, p, q), plus lower estimates and their vectors.

    Blocks whose bound falls to ``max(floor, best lower estimate) * (1 + rel_tol)`` stop iterating: the maximum over
    blocks is then known to that tolerance, which is all a layer bound needs (``prune=False``: each block iterates
    until within ``rel_tol`` of its own lower estimate). Returns (upper (B,), lower (B,),
    vectors (B, q')), where lower[b] = ||K_b x_b|| / ||x_b|| for the returned x_b (in the oriented block's domain).
    """
    if blocks.ndim != 3:
        raise ValueError(f"expected a batch of matrices (B, p, q), got shape {tuple(blocks.shape)}")
    k = _orient(blocks.to(torch.complex128 if blocks.is_complex() else torch.float64))
    batch, inner, n = k.shape
    if batch == 0 or n == 0:
        return torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64), k[..., 0, :]
    fast_dtype = torch.complex64 if k.is_complex() else torch.float32

    h, links = _first_gram(k, inner)

    upper = torch.full((batch,), math.inf, dtype=torch.float64)
    lower = torch.zeros(batch, dtype=torch.float64)
    vectors = torch.zeros(batch, n, dtype=k.dtype)
    active = torch.arange(batch)
    first_fast = _first_fast_step(n, rel_tol)
    # float32 products are only covered by the float32 error bound at full precision (no TF32 / bfloat16)
    use_fast = fast_squarings and torch.get_float32_matmul_precision() == "highest"
    previous = torch.full((batch,), math.inf, dtype=torch.float64)
    best_lower = float(floor)
    zero = ~k.ne(0).flatten(1).any(dim=1)  # an exactly zero block has sigma_1 = 0
    upper[zero] = 0.0
    active = active[~zero]
    h, links = h[~zero], [(e_[~zero], err[~zero], d[~zero]) for e_, err, d in links]
    for step in range(steps + 1):
        fro = frobenius_upper(h)
        upper[active] = torch.minimum(upper[active], _chain_bound(links, fro))
        cand_lower, cand_vec = _column_lower(k[active], h)
        better = cand_lower > lower[active]
        lower[active] = torch.where(better, cand_lower, lower[active])
        vectors[active] = torch.where(better.view(-1, 1), cand_vec, vectors[active])
        best_lower = max(best_lower, float(lower.max()))
        improving = previous[active] > upper[active] * (1.0 + rel_tol / 16)  # else the rounding floor is reached
        previous[active] = upper[active]
        target = best_lower if prune else lower[active]
        keep = (upper[active] > target * (1.0 + rel_tol)) & improving
        if step == steps or not bool(keep.any()) or active.numel() == 0:
            break
        active, h, fro = active[keep], h[keep], fro[keep]
        links = [(e_[keep], err[keep], d[keep]) for e_, err, d in links]
        h, link = _square(h, fro, n, fast_dtype, use_fast and step + 1 >= first_fast)
        links.append(link)
    return upper, lower, vectors


def _first_gram(k: torch.Tensor, inner: int) -> tuple[torch.Tensor, list]:
    """The first Gram matrix of the power-of-two-scaled blocks, and its link (scale, product error, rounding)."""
    fro0 = frobenius_upper(k)
    exp0 = _power_of_two_scale(fro0)
    p0 = k * _inverse_power_of_two(exp0)  # exact: multiplication by a power of two
    no_rounding = torch.full_like(fro0, _TINY)  # scaling by a power of two is exact up to underflow
    return p0.mH @ p0, [(exp0, round_up(matmul_gamma(inner) * frobenius_upper(p0).square()) + _TINY, no_rounding)]


def _square(h: torch.Tensor, fro: torch.Tensor, n: int, fast_dtype, go_fast: bool) -> tuple[torch.Tensor, tuple]:
    """One Gram squaring of ``h`` (Frobenius upper bound ``fro``): the next matrix and its link (scale exponent,
    bound on the product's rounding error, bound on the rounding of the cast to the fast dtype)."""
    exponent = _power_of_two_scale(fro)
    p = h * _inverse_power_of_two(exponent).to(h.dtype)  # exact in either precision
    p_fro = fro * _power_of_two(-exponent)  # exact rescaling of an upper bound
    u, tiny = U64, _TINY
    rounding = torch.full_like(fro, _TINY32 if p.dtype == fast_dtype else _TINY)
    if go_fast and p.dtype != fast_dtype:
        rounding = round_up(p_fro * U32) + _TINY32
        p_fro = round_up(p_fro * (1.0 + U32)) + _TINY32
        p = p.to(fast_dtype)
    if p.dtype == fast_dtype:
        u, tiny = U32, _TINY32
    return p.mH @ p, (exponent, round_up(matmul_gamma(n, u) * p_fro.square()) + tiny, rounding)


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2^exponent for integer exponents (exact: powers of two are representable and pow returns them exactly)."""
    return torch.pow(2.0, exponent.to(torch.float64))


def _first_fast_step(n: int, rel_tol: float) -> int:
    """First squaring worth running in float32 (speed only; the bound accounts for the rounding either way).

    Squaring t costs about gamma_n(2^-24) N_t / 2^(t+1) of relative slack, where N_t = sum_i (lambda_i/lambda_1)^(2^t)
    is the effective rank, roughly n / (8 * 2.5^(t-1)) for random blocks (Marchenko-Pastur spectrum).
    """
    gamma = matmul_gamma(n, U32)
    step = 1
    while step < 8 and gamma * n / (8 * 2.5 ** (step - 1)) / 2 ** (step + 1) > rel_tol / 10:
        step += 1
    return step


def _inverse_power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2^-exponent shaped to scale a batch of matrices."""
    return _power_of_two(-exponent).view(-1, 1, 1)


def _column_lower(k: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower estimates ||K x|| / ||x|| with x the column of the Gram power H at its largest diagonal entry.

    H is Hermitian positive semidefinite and close to a multiple of v v^H, so that column is close to v.
    """
    idx = torch.diagonal(h, dim1=-2, dim2=-1).real.argmax(dim=-1)
    x = torch.gather(h, -1, idx.view(-1, 1, 1).expand(-1, h.shape[-2], 1)).squeeze(-1).to(k.dtype)
    xn = torch.linalg.vector_norm(x, dim=-1)
    kx = torch.linalg.vector_norm((k @ x.unsqueeze(-1)).squeeze(-1), dim=-1)
    ratio = torch.where(xn > 0, kx / torch.where(xn > 0, xn, torch.ones_like(xn)), torch.zeros_like(xn))
    return ratio.to(torch.float64), x
