"""The largest singular value over a batch of blocks, certified by one Gram product and one Cholesky factorisation.

Gram iteration (`certify.lipschitz.gram`) squares every block several times. When only the maximum over many blocks
matters (the Fourier blocks of a convolution), one squaring is enough: with H = fl(K^H K), ||H - K^H K||_2 <=
e = gamma_p ||K||_F^2 (Higham, "Accuracy and Stability of Numerical Algorithms", 3.5). Power iteration on H gives
achieved ratios ||K v|| / ||v|| (lower bounds); with their maximum s over the batch, take c = (s (1 + tol))^2. If
the floating-point Cholesky factorisation of A = (c - e - r) I - H runs to completion, A + r I is positive
definite, where r bounds the backward error of the factorisation (Rump, "Verification of positive definiteness",
BIT Numer. Math. 46, 2006: r >= gamma_{n+1} / (1 - gamma_{n+1}) tr(A) plus an underflow term; we take 8 gamma_{2n+2}
tr(A) for complex arithmetic, plus the rounding of forming A's diagonal). Then lambda_max(K^H K) <= lambda_max(H) + e
< c, so sigma_1(K) <= sqrt(c) for every block that passes, and a block whose Frobenius norm is already below needs
no factorisation. Blocks that fail (their estimate was too low) go to Gram iteration.
"""

from __future__ import annotations

import math

import torch

from certify.lipschitz.gram import U64, _orient, frobenius_upper, gram_bounds, matmul_gamma, round_up

_ROUNDS = 3  # Cholesky attempts before the remaining blocks go to Gram iteration
_TINY = 2.0**-900  # covers underflow in the products and the factorisation (blocks are scaled to norm ~ 1 below)


def _rump_margin(n: int, trace_upper: torch.Tensor, c: float) -> torch.Tensor:
    """Backward-error allowance of a Cholesky factorisation of an n x n Hermitian matrix with trace <= trace_upper,
    plus the rounding of its diagonal ``c - h_ii`` (at most u (c + max h_ii) <= 2 u c for h_ii <= c)."""
    nu = 2.0 * (2 * n + 2) * U64
    return round_up(8.0 * nu / (1.0 - nu) * trace_upper + 4.0 * U64 * c) + _TINY


def certified_block_norms(blocks: torch.Tensor, *, rel_tol: float = 1e-3, floor: float = 0.0, power_steps: int = 16):
    """Like `gram_bounds` (same returns: per-block upper (B,), lower (B,), vectors (B, n) in the oriented block's
    domain), but each upper is only guaranteed to bound its block and to be within ``rel_tol`` of the batch's largest
    lower estimate (or ``floor``): exactly what a maximum over blocks needs."""
    if blocks.ndim != 3:
        raise ValueError(f"expected a batch of matrices (B, p, q), got shape {tuple(blocks.shape)}")
    k = _orient(blocks.to(torch.complex128 if blocks.is_complex() else torch.float64))
    batch, inner, n = k.shape
    if batch == 0 or n == 0:
        return gram_bounds(blocks, rel_tol=rel_tol, floor=floor)
    # scale the whole batch by one power of two (exact) so that products neither overflow nor underflow
    top = float(frobenius_upper(k).max())
    if top == 0.0:
        return gram_bounds(blocks, rel_tol=rel_tol, floor=floor)
    exponent = math.frexp(top)[1]
    k = k * 2.0**-exponent
    h = k.mH @ k
    e = round_up(matmul_gamma(inner) * frobenius_upper(k).square()) + _TINY
    lower, vectors = _power_lower(k, h, power_steps)
    upper = torch.full((batch,), math.inf, dtype=torch.float64)
    fro_h = round_up(frobenius_upper(h) + e)
    pending = torch.arange(batch)
    for _ in range(_ROUNDS):
        best = max(float(lower.max()), floor * 2.0**-exponent)
        c = round_up(round_up(best * (1.0 + rel_tol)) ** 2)
        easy = fro_h[pending] < c  # lambda_max(H) <= ||H||_F
        upper[pending[easy]] = c
        hard = pending[~easy]
        if hard.numel():
            margin = _rump_margin(n, torch.full((hard.numel(),), n * c, dtype=torch.float64), c)
            shift = (c - e[hard] - margin) * (1.0 - 4 * U64)
            a = -h[hard]
            a.diagonal(dim1=-2, dim2=-1).add_(shift.view(-1, 1).to(a.dtype))
            ok = torch.linalg.cholesky_ex(a)[1].eq(0) & (shift > 0)
            upper[hard[ok]] = c
            hard = hard[~ok]
        pending = hard
        if not pending.numel():
            break
        # the failing blocks hold a larger singular value than the estimates found: iterate them further
        more, more_vectors = _power_lower(k[pending], h[pending], 4 * power_steps, vectors[pending])
        better = more > lower[pending]
        lower[pending] = torch.where(better, more, lower[pending])
        vectors[pending] = torch.where(better.view(-1, 1), more_vectors, vectors[pending])
    if pending.numel():
        best = max(float(lower.max()), floor * 2.0**-exponent)
        g_upper, g_lower, g_vectors = gram_bounds(k[pending], rel_tol=rel_tol, floor=best)
        upper[pending] = round_up(g_upper.square())
        better = g_lower > lower[pending]
        lower[pending] = torch.where(better, g_lower, lower[pending])
        vectors[pending] = torch.where(better.view(-1, 1), g_vectors.to(vectors.dtype), vectors[pending])
    scale = 2.0**exponent
    return round_up(round_up(torch.sqrt(upper)) * scale), lower * scale, vectors


def _power_lower(k: torch.Tensor, h: torch.Tensor, steps: int,
                 start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Power iteration on H from ``start`` (default: its column of largest diagonal); returns achieved
    ||K v|| / ||v|| and v."""
    if start is None:
        idx = torch.diagonal(h, dim1=-2, dim2=-1).real.argmax(dim=-1)
        v = torch.gather(h, -1, idx.view(-1, 1, 1).expand(-1, h.shape[-2], 1))
    else:
        v = start.unsqueeze(-1).to(h.dtype)
    for _ in range(steps):
        v = h @ v
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-300)
    v = v.squeeze(-1)
    vn = torch.linalg.vector_norm(v, dim=-1)
    kv = torch.linalg.vector_norm((k @ v.unsqueeze(-1)).squeeze(-1), dim=-1)
    ratio = torch.where(vn > 0, kv / vn.clamp_min(1e-300), torch.zeros_like(vn))
    return ratio.to(torch.float64), v
