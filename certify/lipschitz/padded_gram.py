"""Exact norm of a zero-padded convolution on a small map: its Gram matrix formed from kernel tap products, a Lanczos
estimate and a Cholesky certificate (`certify.lipschitz.gram_top.certify_top`).

Why not a Fourier bound. Every circular or Toeplitz-symbol bound (the circular embedding of `certify.lipschitz.conv`
on any grid or twist, Gram iteration on full-padded kernels as in Delattre, Barthelemy and Allauzen, "Spectral norm
of convolutional layers with circular and zero paddings", 2024) is at least the largest symbol value sampled on some
grid, while on a small map the boundary outputs, which lose taps, pull the zero-padded norm below it: 3 % on 7 x 7
maps of random 3 x 3 kernels, of which a circular grid twisted to its best position recovers 0.5 % and treating one
axis exactly (Fourier on the other) half. So the operator itself is bounded: A is (C_out P_out) x (C_in P_in) with
P the spatial positions, and the Gram matrix of its smaller side is assembled blockwise. On the input side,
A^T A[(p, i), (q, j)] = sum over outputs r reading p with tap t and q with tap t' of (K_t^T K_t')[i, j], so the T^2
products K_t^T K_t' are formed once and added at their (p, q) blocks; the output side is the same with the roles of
inputs and outputs (and K_t, K_t^T) exchanged. Groups are independent blocks (the maximum over groups).

Floating point. The weight is scaled by a power of two (exact) to a largest entry in [0.5, 1), so the top eigenvalue
is at least 1 / 4. Each Gram entry is one inner product of at most c T terms (c the summed channels), evaluated as
products of length c then at most T additions: within gamma_{c + T} of |A|^T |A| entrywise (Higham, "Accuracy and
Stability of Numerical Algorithms", 3.5), hence within gamma_{c + T} ||A||_F^2 <= gamma_{c + T} P_shared ||K||_F^2
in spectral norm, which `certify_top` adds to its Cholesky certificate. The matrix is dense (8 N^2 bytes, N^3 / 3
flops to certify), so it is used up to a side of `CPU_MAX_SIDE` (`GPU_MAX_SIDE` where a GPU runs the certificate).
Measured on two shared cores: side 3136 (64 channels on 7 x 7) about 1.5 s, side 6272 about 6 s; ResNet-50's
512-channel 7 x 7 layers (side 25088, 5e12 flops) stay with the circular bound on a CPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch

from certify.lipschitz.conv import ConvGeometry, adjoint
from certify.lipschitz.gram import frobenius_upper, matmul_gamma, round_up
from certify.lipschitz.gram_top import certify_top, top_eigenpair

CPU_MAX_SIDE = 4096  # a certificate of about 2e10 flops: a second or two on two cores
GPU_MAX_SIDE = 1 << 16  # 32 GiB of float64 Gram matrix
_LANCZOS_STEPS = 48  # per restart; from a power-iteration start two runs agree to 1e-10


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def gram_side(geom: ConvGeometry) -> int:
    """Size of the smaller Gram matrix of one group's operator."""
    c_out = geom.weight.shape[0] // geom.groups
    return min(geom.weight.shape[1] * math.prod(geom.input_shape[1:]), c_out * math.prod(geom.output_spatial))


def fits(geom: ConvGeometry, device: torch.device | None = None, max_side: int | None = None) -> bool:
    device = device or default_device()
    limit = max_side if max_side is not None else (GPU_MAX_SIDE if device.type == "cuda" else CPU_MAX_SIDE)
    return gram_side(geom) <= limit


def _axis_rows(geom: ConvGeometry, input_side: bool) -> list[torch.Tensor]:
    """Per axis, a table (shared positions, taps) of the row position each tap reaches (-1: none).

    Input side: shared = outputs r, row = input p = s r + d t - pad. Output side: shared = inputs p, row = the
    output r with s r + d t - pad = p (when there is one)."""
    tables = []
    for n_in, n_out, k, s, d, b in zip(geom.input_shape[1:], geom.output_spatial, geom.kernel, geom.stride,
                                       geom.dilation, geom.pads_begin):
        r = torch.arange(n_out).view(-1, 1)
        p = s * r + d * torch.arange(k).view(1, -1) - b
        valid = (p >= 0) & (p < n_in)
        if input_side:
            tables.append(torch.where(valid, p, -1))
            continue
        table = torch.full((n_in, k), -1, dtype=torch.long)
        rr, tt = valid.nonzero(as_tuple=True)
        table[p[rr, tt], tt] = rr
        tables.append(table)
    return tables


def _pair_rows(tables: list[torch.Tensor], rows_shape: tuple[int, ...], t: tuple[int, ...],
               u: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row, column) positions of the blocks that taps t and u reach from a common shared position."""
    per_axis = []
    for table, ta, ua in zip(tables, t, u):
        a, b = table[:, ta], table[:, ua]
        keep = (a >= 0) & (b >= 0)
        per_axis.append((a[keep], b[keep]))
    rows = torch.zeros(1, dtype=torch.long)
    cols = torch.zeros(1, dtype=torch.long)
    for (a, b), size in zip(per_axis, rows_shape):
        rows = (rows.view(-1, 1) * size + a.view(1, -1)).reshape(-1)
        cols = (cols.view(-1, 1) * size + b.view(1, -1)).reshape(-1)
    return rows, cols


def gram_matrix(geom: ConvGeometry, kernel: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, bool]:
    """The Gram matrix (float64, on ``device``) of the smaller side of the operator with one group's ``kernel``
    (C_out, C_in, *k) on ``geom``'s grid, and whether it is the input side (A^T A)."""
    c_out, c_in = kernel.shape[:2]
    p_in, p_out = math.prod(geom.input_shape[1:]), math.prod(geom.output_spatial)
    input_side = c_in * p_in <= c_out * p_out
    taps = list(itertools.product(*[range(k) for k in geom.kernel]))
    k = kernel.to(device=device, dtype=torch.float64).flatten(2).permute(2, 0, 1)  # (T, C_out, C_in)
    if not input_side:
        k = k.mT
    c, positions = k.shape[2], (p_in if input_side else p_out)
    rows_shape = tuple(geom.input_shape[1:]) if input_side else tuple(geom.output_spatial)
    tables = _axis_rows(geom, input_side)
    h = torch.zeros(positions, c, positions, c, dtype=torch.float64, device=device)
    blocks = h.permute(0, 2, 1, 3)  # a view: (p, q, i, j)
    for ti, t in enumerate(taps):
        products = k[ti].mT @ k  # (T, c, c): K_t^T K_u for every u
        for ui, u in enumerate(taps):
            rows, cols = _pair_rows(tables, rows_shape, t, u)
            if rows.numel():
                blocks.index_put_((rows.to(device), cols.to(device)), products[ui], accumulate=True)
    return h.reshape(positions * c, positions * c), input_side


def exact_norm(geom: ConvGeometry, device: torch.device | None = None,
               start: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """(guaranteed upper bound of the operator norm, an input (float64, CPU) achieving close to it); ``start``, an
    input close to the top singular vector (a power-iteration vector), shortens the Lanczos estimate."""
    device = device or default_device()
    g = geom.groups
    w = geom.weight.detach().to(torch.float64)
    c_out, c_in = w.shape[0] // g, w.shape[1]
    best, best_input = 0.0, torch.zeros(geom.input_shape, dtype=torch.float64)
    for group in range(g):
        kernel = w[group * c_out:(group + 1) * c_out]
        top = float(kernel.abs().max())
        if top == 0.0:
            continue
        exponent = math.frexp(top)[1]
        kernel = kernel * 2.0**-exponent  # exact
        sub = dataclasses.replace(geom, weight=kernel, input_shape=(c_in, *geom.input_shape[1:]), groups=1)
        first = torch.randn(sub.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        if start is not None and bool(start[group * c_in:(group + 1) * c_in].ne(0).any()):
            first = start[group * c_in:(group + 1) * c_in].to(torch.float64)
        estimate, vector = top_eigenpair(lambda x, sub=sub: _gram_apply(sub, x), tol=1e-10, steps=_LANCZOS_STEPS,
                                         start=first)
        h, input_side = gram_matrix(sub, kernel, device)
        shared = math.prod(geom.output_spatial if input_side else geom.input_shape[1:])
        fro = float(frobenius_upper(kernel.reshape(1, kernel.shape[0], -1))[0])
        summed = kernel.shape[0] if input_side else kernel.shape[1]
        error = round_up(round_up(matmul_gamma(summed + math.prod(geom.kernel)) * round_up(fro * fro)) * shared)
        upper = round_up(math.sqrt(certify_top(h, estimate, error))) * 2.0**exponent
        if upper > best:
            best = upper
            best_input = torch.zeros(geom.input_shape, dtype=torch.float64)
            best_input[group * c_in:(group + 1) * c_in] = vector
    return best, best_input


def _gram_apply(geom: ConvGeometry, x: torch.Tensor) -> torch.Tensor:
    """A^T A x for one input (no batch axis), by the convolution and its adjoint."""
    x = x.unsqueeze(0).requires_grad_(True)
    y = geom.apply(x)
    return adjoint(y, x, y.detach())[0]
