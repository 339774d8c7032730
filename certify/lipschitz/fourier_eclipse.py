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
factoring it, as in the dense recursion; the final norm is certified by `certify.lipschitz.cholesky`, plus
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


def _factor(blocks: list[torch.Tensor], lams: list[float], shifts: list[float]):
    """Cholesky factors of X_i at a chunk of frequencies for the layers whose multipliers are known (None: X_0 = I),
    and ``W_next X^-1/2`` for the next layer's blocks (``blocks[len(lams)]``). None if a factorisation fails."""
    factor = None
    for w, lam, shift in zip(blocks, lams, shifts):
        b = w if factor is None else torch.linalg.solve_triangular(factor, w.mH, upper=False).mH
        x = (b @ b.mH).mul_(-lam * lam)
        x.diagonal(dim1=-2, dim2=-1).add_(2.0 * lam - shift)
        factor, info = torch.linalg.cholesky_ex(x)
        if bool(info.ne(0).any()):
            return None
    w = blocks[len(lams)]
    return w if factor is None else torch.linalg.solve_triangular(factor, w.mH, upper=False).mH


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

    def scaled_blocks(chunk, count):
        return [blocks_at(kernels[i], grid, chunk) * scales[i] for i in range(count)]

    lams: list[float] = []
    shifts: list[float] = []
    inverse = 1.0  # bound of ||X_{i-1}^-1||
    for i in range(len(layers) - 1):
        top, fro = 0.0, 0.0
        for chunk in chunks:
            blocks = scaled_blocks(chunk, i + 1)
            b = _factor(blocks, lams, shifts)
            if b is None:
                return None
            top = max(top, float(torch.linalg.eigvalsh(b @ b.mH)[..., -1].max()))
            fro = max(fro, float(frobenius_upper(blocks[i]).max()))
        if not top > 0:
            return None
        lam = 1.0 / top
        eps = errors[i] * scales[i]
        lams.append(lam)
        shifts.append(ECLIPSE_SHIFT * lam + round_up(lam * lam * (2 * fro + eps) * eps * inverse))
        inverse = 2.0 / lam
    upper = 0.0
    for chunk in chunks:
        final = _factor(scaled_blocks(chunk, len(layers)), lams, shifts)
        if final is None:
            return None
        up, _, _ = certified_block_norms(final, rel_tol=1e-6)
        upper = max(upper, float(up.max()))
    upper = round_up(upper + errors[-1] * scales[-1] * math.sqrt(inverse))
    return round_up(upper * (1.0 + ECLIPSE_MARGIN))
