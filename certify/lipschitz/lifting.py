"""Zero-padded convolution chains lifted to circular ones on one common grid (Sedghi et al. 2019 for the circular
operator's Fourier blocks): the products of a chain's lifts are again circular convolutions, so their norms, and
ECLipsE's per-frequency recursions, can be certified frequency by frequency. Shared by the averaged-operator bound
(`certify.lipschitz.averaged`) and ECLipsE on convolution runs (`certify.lipschitz.fourier_eclipse`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from certify.lipschitz.conv import ConvGeometry, _twiddles, dft_error, polyphase


@dataclass
class ConvLayer:
    """A zero-padded convolution in a chain: dense (groups expanded) kernel and its geometry on the real input."""

    weight: torch.Tensor  # (C_out, C_in, *k) float64
    spatial: tuple[int, ...]  # real input size per axis
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]


def dense_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The (C_out, C_in, *k) kernel of a grouped convolution (zero between groups)."""
    if groups == 1:
        return weight
    c_out, c_in_g = weight.shape[:2]
    out = weight.new_zeros((c_out, c_in_g * groups, *weight.shape[2:]))
    per = c_out // groups
    for g in range(groups):
        out[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = weight[g * per:(g + 1) * per]
    return out


def common_grid(layers: list[ConvLayer]) -> list[tuple[int, ...]]:
    """Circular grid sizes M_0, ..., M_L per axis: M_{l-1} >= n_{l-1} + pads_l, divisible by s_l, M_l = M_{l-1}/s_l."""
    dims = len(layers[0].spatial)
    grids = []
    for axis in range(dims):
        later = [math.prod(layer.stride[axis] for layer in layers[i:]) for i in range(len(layers))]
        m = max(math.ceil((layer.spatial[axis] + layer.pads_begin[axis] + layer.pads_end[axis]) / later[i])
                for i, layer in enumerate(layers))
        sizes = [m * later[0]]
        for layer in layers:
            sizes.append(sizes[-1] // layer.stride[axis])
        grids.append(sizes)
    return [tuple(grids[a][i] for a in range(dims)) for i in range(len(layers) + 1)]


def _joint_twiddles(grid: tuple[int, ...], taps: tuple[int, ...], freqs: torch.Tensor) -> torch.Tensor:
    """``exp(-2 pi i <f, t / m>)`` (F, T) for all taps at once, the angle reduced exactly in integers first:
    ``sum_a f_a t_a M / m_a mod M`` with ``M = prod m``, so each twiddle carries one rounded angle, as
    `certify.lipschitz.conv._twiddles` does for one axis."""
    total = math.prod(grid)
    residues = torch.zeros(freqs.shape[0], *taps, dtype=torch.int64)
    for axis, (m, t) in enumerate(zip(grid, taps)):
        shape = [1] * len(taps)
        shape[axis] = t
        residues = residues + (freqs[:, axis].view(-1, *[1] * len(taps)) * torch.arange(t).view(shape)
                               * (total // m)) % total
    angle = (residues % total).reshape(freqs.shape[0], -1).to(torch.float64) * (2.0 * math.pi / total)
    return torch.polar(torch.ones_like(angle), -angle)


def blocks_at(kernel: torch.Tensor, grid: tuple[int, ...], freqs: torch.Tensor) -> torch.Tensor:
    """Fourier blocks ``sum_t K_t exp(-2 pi i <f, t> / m)`` (F, C_out, C_in') of a polyphase kernel (C_out, C_in',
    *taps) at the frequencies ``freqs`` (F, D). A real kernel with few taps: one sum over all T taps, as two real
    products (cosine and sine parts), whose error (T + 40) u times the sum of |terms| (one twiddle per term) stays
    within the per-axis model of `certify.lipschitz.conv.dft_error`, 2 sum_a (t_a + 40) u; otherwise one axis at a
    time (the same sums and twiddles as `certify.lipschitz.conv.frequency_chunks`)."""
    taps = tuple(kernel.shape[2:])
    count = math.prod(taps)
    if not kernel.is_complex() and count + 40 <= 2 * sum(t + 40 for t in taps) and math.prod(grid) < 2**40:
        tw = _joint_twiddles(grid, taps, freqs)  # (F, T)
        flat = kernel.to(torch.float64).reshape(*kernel.shape[:2], count).movedim(2, 0).reshape(count, -1)
        out = torch.complex(tw.real @ flat, tw.imag @ flat)
        return out.reshape(freqs.shape[0], *kernel.shape[:2])
    acc = torch.tensordot(_twiddles(grid[0], taps[0], freqs[:, 0]), kernel.to(torch.complex128),
                          dims=([1], [2]))  # (F, C_out, C_in', *other taps)
    for axis in range(1, len(grid)):
        tw = _twiddles(grid[axis], acc.shape[3], freqs[:, axis])  # (F, taps)
        acc = (acc * tw.view(tw.shape[0], 1, 1, tw.shape[1], *([1] * (acc.dim() - 4)))).sum(dim=3)
    return acc


def lifted_kernels(layers: list[ConvLayer]) -> tuple[list, list[float]]:
    """The circular lifts on the common grid: per layer (polyphase kernel, its output grid) and the bound on the
    error of its computed Fourier blocks."""
    kernels, errors = [], []
    for layer, grid in zip(layers, common_grid(layers)):
        spatial = tuple(g - b - e for g, b, e in zip(grid, layer.pads_begin, layer.pads_end))
        geom = ConvGeometry(layer.weight, (layer.weight.shape[1], *spatial), layer.stride, layer.dilation,
                            layer.pads_begin, layer.pads_end, 1)
        pp = polyphase(geom)
        kernels.append((pp.kernel[0], pp.grid))
        errors.append(float(dft_error(pp.kernel)[0]))
    return kernels, errors
