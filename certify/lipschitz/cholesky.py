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

from certify.lipschitz.gram import U64, frobenius_upper, gram_bounds, matmul_gamma, round_up
from certify.lipschitz.gram_top import cholesky_allowance, cholesky_passes, top_eigenpair

_ROUNDS = 3  # Cholesky attempts before the remaining blocks go to Gram iteration
_TINY = 2.0**-900  # covers underflow in the products and the factorisation (blocks are scaled to norm ~ 1 below)
_ROUGH_STEPS = 4  # power steps for every block; only the leading ones (and those a certificate misses) get more
_LEADING = 8
_LANCZOS_BLOCKS = 4  # batches this small get Lanczos estimates (a large single matrix: power iteration is slow)


def certified_block_norms(blocks: torch.Tensor, *, rel_tol: float = 1e-3, floor: float = 0.0, power_steps: int = 16):
    """Like `gram_bounds` (same returns: per-block upper (B,), lower (B,), vectors (B, n) on the block's smaller
    side: the input side unless the block is wide), but each upper is only guaranteed to bound its block and to be
    within ``rel_tol`` of the batch's largest lower estimate (or ``floor``): exactly what a maximum over blocks
    needs."""
    if blocks.ndim != 3:
        raise ValueError(f"expected a batch of matrices (B, p, q), got shape {tuple(blocks.shape)}")
    blocks = blocks.to(torch.complex128 if blocks.is_complex() else torch.float64)
    batch, p, q = blocks.shape
    fro = frobenius_upper(blocks) if batch and p and q else None
    if fro is None or float(fro.max()) == 0.0:
        return gram_bounds(blocks, rel_tol=rel_tol, floor=floor)
    # scale the whole batch by one power of two (exact) so that products neither overflow nor underflow
    exponent = math.frexp(float(fro.max()))[1]
    scaled = blocks * 2.0**-exponent
    fro = fro * 2.0**-exponent  # an exact rescaling of upper bounds
    k = scaled.mH if p < q else scaled  # the Gram matrix K^H K on the smaller side (a view: no copy)
    state = _State(k, fro, floor * 2.0**-exponent, rel_tol)
    _certify(state, power_steps)
    scale = 2.0**exponent
    return round_up(state.upper * scale), state.lower * scale, state.vectors


class _State:
    """Per-block certified uppers (sigma units), achieved lower ratios and their vectors, and what is left to do."""

    def __init__(self, k: torch.Tensor, fro: torch.Tensor, floor: float, rel_tol: float):
        batch, _, n = k.shape
        self.k, self.fro, self.floor, self.rel_tol = k, fro, floor, rel_tol
        self.upper = torch.full((batch,), math.inf, dtype=torch.float64)
        self.lower = torch.zeros(batch, dtype=torch.float64)
        self.vectors = torch.zeros(batch, n, dtype=k.dtype)
        self.pending = torch.arange(batch)

    def level(self) -> float:
        """The certification level c = (best lower (1 + tol))^2, rounded up."""
        best = max(float(self.lower.max()), self.floor)
        return round_up(round_up(best * (1.0 + self.rel_tol)) ** 2)

    def offer(self, index: torch.Tensor, lower: torch.Tensor, vectors: torch.Tensor) -> None:
        better = lower > self.lower[index]
        self.lower[index] = torch.where(better, lower, self.lower[index])
        self.vectors[index] = torch.where(better.view(-1, 1), vectors.to(self.vectors.dtype), self.vectors[index])


def _certify(state: _State, power_steps: int) -> None:
    """Gram products, power estimates (rough for every block, long for the leading ones), Cholesky certificates;
    Gram iteration for the blocks they miss."""
    pending = state.pending
    if not pending.numel():
        return
    k = state.k if len(pending) == len(state.k) else state.k[pending]  # indexing would copy every block
    inner, n = k.shape[1:]
    h = k.mH @ k
    e = round_up(matmul_gamma(inner) * state.fro[pending].square()) + _TINY
    if len(pending) <= _LANCZOS_BLOCKS:
        # one run, ended once its estimate is well within the tolerance (the certificate needs no more)
        top = torch.stack([top_eigenpair(h[i], tol=math.inf, accuracy=1e-2 * state.rel_tol)[1]
                           for i in range(len(pending))])
        state.offer(pending, _achieved(k, top), top)
    state.offer(pending, *_power_lower(k, h, min(power_steps, _ROUGH_STEPS)))
    lead = state.lower[pending].argsort(descending=True)[:_LEADING]
    state.offer(pending[lead], *_power_lower(k[lead], h[lead], power_steps, state.vectors[pending[lead]]))
    fro_h = round_up(frobenius_upper(h) + e)
    local = torch.arange(len(pending))
    for _ in range(_ROUNDS):
        c = state.level()
        easy = fro_h[local] < c  # lambda_max(H) <= ||H||_F
        state.upper[pending[local[easy]]] = round_up(math.sqrt(c))
        hard = local[~easy]
        if hard.numel():
            # passing at the shift puts lambda_max(K^H K) below shift + allowance + e <= c
            shift = (c - e[hard] - cholesky_allowance(n, c, h.is_complex())) * (1.0 - 4 * U64)
            ok = cholesky_passes(h, shift, None if hard.numel() == len(h) else hard)
            state.upper[pending[hard[ok]]] = round_up(math.sqrt(c))
            hard = hard[~ok]
        local = hard
        if not local.numel():
            return
        # the failing blocks hold a larger singular value than the estimates found: iterate them further
        state.offer(pending[local], *_power_lower(k[local], h[local], 4 * power_steps,
                                                  state.vectors[pending[local]]))
    rest = pending[local]
    best = max(float(state.lower.max()), state.floor)
    g_upper, g_lower, g_vectors = gram_bounds(k[local], rel_tol=state.rel_tol, floor=best)
    state.upper[rest] = g_upper
    state.offer(rest, g_lower, g_vectors)


def _achieved(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||K v|| / ||v|| evaluated in K's precision (achieved ratios: lower bounds up to that evaluation's rounding)."""
    v = v.to(k.dtype)
    vn = torch.linalg.vector_norm(v, dim=-1)
    # a view K = S^H of contiguous blocks S: ||K v|| = ||v^H S||, read in memory order
    kv = k @ v.unsqueeze(-1) if k.is_contiguous() else v.conj().unsqueeze(-2) @ k.mH
    kv = torch.linalg.vector_norm(kv, dim=(-2, -1))
    return torch.where(vn > 0, kv / vn.clamp_min(1e-300), torch.zeros_like(vn)).to(torch.float64)


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
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-30)
    v = v.squeeze(-1)
    return _achieved(k, v), v
