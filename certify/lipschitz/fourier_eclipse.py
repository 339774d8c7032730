"""ECLipsE-Fast on a run of convolutions, frequency by frequency: the joint bound of ``C_m s(C_{m-1} ... s(C_1 x))``
for zero-padded convolutions and slope-restricted activations, without forming any matrix of the feature maps.

Lift. As in `certify.lipschitz.averaged`, the convolutions (the first may be strided, the others have stride 1) are
lifted to circular ones on one grid where no tap read by a real output wraps; the crop to the real window after
each layer is a 0/1 diagonal, absorbed into the activation (slope still in [0, beta]). The input embedding and the
final crop have norm <= 1.

Recursion. ECLipsE-Fast (Xu & Sivaranjani 2024; `certify.lipschitz.eclipse`) with ``X_0 = I`` keeps every ``X_i``
circulant with blocks: at each frequency w of the (half) spectrum, with the layer's Fourier block ``W_i(w)``,

    X_i(w) = 2 lambda_i I - lambda_i^2 W_i(w) X_{i-1}(w)^-1 W_i(w)^H,   lambda_i = 1 / max_w ||W_i X_{i-1}^-1 W_i^H||,

(one scalar multiplier per layer, as the slope condition needs) and the bound is
``max_w ||W_m(w) X_{m-1}(w)^-1/2||``. Since lambda_i is a maximum over all frequencies, each layer takes one pass
over the spectrum (the factors of earlier layers are recomputed, not stored: memory stays one chunk of blocks).

Floating point. Computed blocks differ from the exact ones by ``eps_i`` (`certify.lipschitz.conv.dft_error`). Each
X_i is lowered by ``lambda_i^2 (2 ||W_i|| + eps_i) eps_i ||X_{i-1}^-1||`` (so it stays below the exact right-hand
side; ``||X_{i-1}^-1|| <= 2 / lambda_{i-1}``) and by ``ECLIPSE_SHIFT lambda_i`` for the rounding of forming and
factoring it, as in the dense recursion (the maximum
in lambda_i is estimated, see `_TopEigenvalue`; every X_i is checked to exceed lambda_i / 2, which the bound
``||X_i^-1|| <= 2 / lambda_i`` in these terms needs); the final norm is certified by `certify.lipschitz.cholesky`, plus
``eps_m ||X_{m-1}^-1||^(1/2)``, times ``1 + ECLIPSE_MARGIN``.
"""

from __future__ import annotations

import math

import torch

from certify.lipschitz.cholesky import certified_block_norms
from certify.lipschitz.eclipse import ECLIPSE_MARGIN, ECLIPSE_SHIFT
from certify.lipschitz.gram import frobenius_upper, round_up
from certify.lipschitz.lifting import blocks_at, lifted_kernels

_BLOCK_BYTES = 1 << 26  # blocks of one layer formed at once
_KEPT_BYTES = 1 << 28  # the Gram blocks of one layer kept between passes when they fit (else recomputed)
_POWER_STEPS = 8  # power steps estimating every block's top eigenvalue; the leading blocks get it exactly
_LEADING = 4


#: Relative margin of the check X > lambda / 2 (covers the backward error of a Cholesky factorisation of a matrix
#: of norm <= 2 lambda, Rump 2006, for sizes up to about 10^4).
_HALF_MARGIN = 1e-5


def _x_factor(gram: torch.Tensor, lam: float, shift: float) -> torch.Tensor | None:
    """The Cholesky factor of ``X = (2 lam - shift) I - lam^2 G`` from the Gram blocks ``G = B B^H`` (consumed),
    or None when one fails or when ``X - lam / 2 I`` is not definite: the error terms use ``||X^-1|| <= 2 / lam``,
    which the exact multiplier 1 / lambda_max gives and an estimated one must be checked for."""
    x = gram.mul_(-lam * lam)
    x.diagonal(dim1=-2, dim2=-1).add_(2.0 * lam - shift)
    factor, info = torch.linalg.cholesky_ex(x)
    if bool(info.ne(0).any()):
        return None
    x.diagonal(dim1=-2, dim2=-1).sub_(0.5 * lam * (1.0 + _HALF_MARGIN))
    return factor if bool(torch.linalg.cholesky_ex(x)[1].eq(0).all()) else None


def _whiten(w: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
    """``W X^-1/2`` in the sense ``W L^-H`` (X = L L^H): the next layer's blocks seen through the last factor."""
    return w if factor is None else torch.linalg.solve_triangular(factor, w.mH, upper=False).mH


class _TopEigenvalue:
    """The largest eigenvalue over all chunks of Hermitian PSD blocks, estimated: a few power steps on every block,
    then the exact value of the leading blocks over the whole spectrum. Only a choice of multiplier: ECLipsE's
    guarantee holds for any lambda_i > 0 with X_i positive definite (checked by its factorisation), and X_i stays
    definite for lambda_i < 2 / lambda_max; `_x_factor` checks the margin the error terms need."""

    def __init__(self):
        self.best = 0.0
        self.leaders: list[tuple[float, torch.Tensor]] = []

    def add(self, gram: torch.Tensor) -> None:
        idx = torch.diagonal(gram, dim1=-2, dim2=-1).real.argmax(dim=-1)
        v = torch.gather(gram, -1, idx.view(-1, 1, 1).expand(-1, gram.shape[-2], 1))
        for _ in range(_POWER_STEPS):
            v = gram @ v
            v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-300)
        rayleigh = (v.mH @ (gram @ v)).real.reshape(-1)
        self.best = max(self.best, float(rayleigh.max()))
        for index in rayleigh.argsort(descending=True)[:_LEADING].tolist():
            self.leaders.append((float(rayleigh[index]), gram[index].clone()))
        self.leaders = sorted(self.leaders, key=lambda t: -t[0])[:_LEADING]

    def value(self) -> float:
        if not self.leaders:
            return self.best
        exact = torch.linalg.eigvalsh(torch.stack([g for _, g in self.leaders]))[..., -1]
        return max(self.best, float(exact.max()))


def conv_eclipse(layers: list, betas: list[float]) -> float | None:
    """The ECLipsE-Fast bound of a run of ``lifting.ConvLayer`` (the first may be strided, the others stride 1)
    with activations of slopes [0, beta] between them, or None when a factorisation fails."""

    if any(max(layer.stride) != 1 for layer in layers[1:]):
        raise ValueError("only the first convolution of an ECLipsE run may be strided")
    lifted, errors = lifted_kernels(layers)
    kernels, grid = [k for k, _ in lifted], lifted[0][1]
    scales = [1.0] + list(betas)  # slope [0, beta] = beta * slope [0, 1], folded into the next layer
    axes = [torch.arange(g) for g in grid]
    axes[-1] = torch.arange(grid[-1] // 2 + 1)  # real kernels: conjugate-symmetric spectrum
    freqs = torch.cartesian_prod(*axes).reshape(-1, len(grid))
    widest = max(k.shape[0] * k.shape[1] for k in kernels)
    step = max(1, _BLOCK_BYTES // (16 * widest * 4))
    chunks = [freqs[s:s + step] for s in range(0, freqs.shape[0], step)]
    keep = 16 * freqs.shape[0] * max(k.shape[0] ** 2 for k in kernels) <= _KEPT_BYTES
    run = _Run(kernels, grid, scales, keep)
    inverse = 1.0  # bound of ||X_{i-1}^-1||
    for i in range(len(layers) - 1):
        estimate, fro = _TopEigenvalue(), 0.0
        for c, chunk in enumerate(chunks):
            gram, w = run.gram(c, chunk, i)
            if gram is None:
                return None
            estimate.add(gram)
            fro = max(fro, float(frobenius_upper(w).max()))
        top = estimate.value()
        if not top > 0:
            return None
        lam = 1.0 / top
        eps = errors[i] * scales[i]
        run.lams.append(lam)
        run.shifts.append(ECLIPSE_SHIFT * lam + round_up(lam * lam * (2 * fro + eps) * eps * inverse))
        inverse = 2.0 / lam
    upper = 0.0
    for c, chunk in enumerate(chunks):
        final = run.final(c, chunk)
        if final is None:
            return None
        up, _, _ = certified_block_norms(final, rel_tol=1e-6)
        upper = max(upper, float(up.max()))
    upper = round_up(upper + errors[-1] * scales[-1] * math.sqrt(inverse))
    return round_up(upper * (1.0 + ECLIPSE_MARGIN))


class _Run:
    """The recursion's state per chunk of frequencies: the multipliers fixed so far and, when they fit in
    ``_KEPT_BYTES``, the last layer's Gram blocks ``B_i B_i^H`` (so each pass forms one layer's blocks); otherwise
    the factors of the earlier layers are recomputed from their blocks (memory: one chunk)."""

    def __init__(self, kernels, grid, scales, keep: bool):
        self.kernels, self.grid, self.scales, self.keep = kernels, grid, scales, keep
        self.lams: list[float] = []
        self.shifts: list[float] = []
        self.kept: dict[int, torch.Tensor] = {}

    def blocks(self, chunk, i: int) -> torch.Tensor:
        return blocks_at(self.kernels[i], self.grid, chunk) * self.scales[i]

    def whitened(self, c: int, chunk, i: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(W_i X_{i-1}^-1/2, W_i)`` at the chunk (layer ``i``, with ``i`` multipliers known); None for the first
        when a factorisation fails."""
        w = self.blocks(chunk, i)
        if self.keep and i > 0:
            factor = _x_factor(self.kept.pop(c), self.lams[i - 1], self.shifts[i - 1])
            return (None if factor is None else _whiten(w, factor)), w
        factor = None
        for j in range(i):
            b = _whiten(self.blocks(chunk, j), factor)
            factor = _x_factor(b @ b.mH, self.lams[j], self.shifts[j])
            if factor is None:
                return None, w
        return _whiten(w, factor), w

    def gram(self, c: int, chunk, i: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(B_i B_i^H, W_i)`` at the chunk, keeping the Gram blocks for the next pass when they fit."""
        b, w = self.whitened(c, chunk, i)
        if b is None:
            return None, w
        gram = b @ b.mH
        if self.keep:
            self.kept[c] = gram.clone()
        return gram, w

    def final(self, c: int, chunk) -> torch.Tensor | None:
        return self.whitened(c, chunk, len(self.kernels) - 1)[0]
