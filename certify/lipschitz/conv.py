"""Geometry of a zero-padded convolution: its exact operator, and its embedding into a circular convolution.

Why the Fourier bound holds for the zero-padded operator. Per spatial axis, let the padded input have length
n_p = pad_begin + n + pad_end and output j read taps at j*s + t*d < n_p. On a circular grid of any length M >= n_p no
index used by a real output wraps, so the layer equals R C_M E: E zero-pads the input (an isometry), C_M is the
circular strided convolution on M and R keeps the real outputs (a coordinate projection). Hence
||layer|| <= ||C_M||. Taking M a multiple of the stride s, the polyphase decomposition (Senderovich, Zheltonozhskii,
Soudry, Bronstein, NeurIPS 2022; Sedghi, Gupta, Long, ICLR 2019 for s = 1) writes C_M as a stride-1 circular
convolution on m = M / s points with s^D times as many input channels (tap t*d goes to phase (t*d) mod s at shift
(t*d) // s), whose exact norm is the largest singular value over the m^D Fourier frequencies of the per-frequency
(C_out x C_in s^D) block. Groups make the operator block diagonal (norm = max over groups); a dilated kernel is an
ordinary one with zeros between taps; a transposed convolution is the adjoint of the convolution with the same
weight, on the transposed layer's output size (keeping only as many outputs as the transposed layer has inputs,
again a restriction), and has the same norm. For real kernels K(-w) = conj(K(w)), so half
of the spectrum along the last axis suffices.

The Fourier blocks are formed directly from the taps in float64 (no FFT): each entry is a sum of T products of a
tap with a unit twiddle. With twiddle error below 32 u (the angle is reduced exactly in integers first), each entry
is within gamma * sum_t |k_t| of the exact value, so the block error is at most gamma * ||sum_t |k_t| ||_F in
spectral norm (see `dft_error`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from certify.lipschitz.gram import U64, frobenius_upper, round_up

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution in normal form: weight (C_out, C_in / groups, *k), explicit per-side pads, on one input size."""

    weight: torch.Tensor
    input_shape: tuple[int, ...]  # (C_in, *spatial)
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    groups: int
    output_limit: tuple[int, ...] | None = None  # keep only the first outputs per axis (adjoint of a transposed conv)

    @property
    def dims(self) -> int:
        return self.weight.ndim - 2

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def output_spatial(self) -> tuple[int, ...]:
        full = tuple(
            (n + b + e - ((k - 1) * d + 1)) // s + 1
            for n, b, e, k, d, s in zip(
                self.input_shape[1:], self.pads_begin, self.pads_end, self.kernel, self.dilation, self.stride
            )
        )
        return full if self.output_limit is None else tuple(min(f, lim) for f, lim in zip(full, self.output_limit))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The real zero-padded convolution on a batch, in the dtype of ``x``."""
        pad: list[int] = []
        for b, e in zip(reversed(self.pads_begin), reversed(self.pads_end)):
            pad += [b, e]
        x = F.pad(x, pad) if any(pad) else x
        w = self.weight.to(x.dtype)
        y = _CONV[self.dims](x, w, stride=self.stride, dilation=self.dilation, groups=self.groups)
        if self.output_limit is not None:
            y = y[(slice(None), slice(None)) + tuple(slice(0, lim) for lim in self.output_limit)]
        return y


def _per_axis(value, dims: int, name: str, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * dims
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    if len(out) != dims:
        raise ValueError(f"{name} needs {dims} values, got {list(out)}")
    return out


def normalize_conv(
    weight: torch.Tensor,
    input_shape: Sequence[int],
    *,
    stride=None,
    padding=None,
    dilation=None,
    groups: int = 1,
    transposed: bool = False,
    output_padding=None,
) -> ConvGeometry:
    """Validate the parameters and return the convolution whose norm equals the layer's (the adjoint if transposed)."""
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (3, 4, 5):
        raise ValueError("conv weight must be a tensor of shape (C_out, C_in / groups, *kernel) with 1 to 3 axes")
    if not torch.isfinite(weight).all():
        raise ValueError("conv weight has non-finite values")
    dims = weight.ndim - 2
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != dims + 1 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, *spatial) with {dims} positive spatial sizes, got {input_shape}")
    stride = _per_axis(stride, dims, "stride", 1)
    dilation = _per_axis(dilation, dims, "dilation", 1)
    pads = _per_axis(padding, 2 * dims, "padding", 0) if padding is not None else (0,) * (2 * dims)
    groups = int(groups)
    if min(stride) < 1 or min(dilation) < 1 or min(pads, default=0) < 0 or groups < 1:
        raise ValueError("stride and dilation must be >= 1, pads >= 0 and groups >= 1")
    pads_begin, pads_end = pads[:dims], pads[dims:]
    kernel = tuple(weight.shape[2:])
    if transposed:
        c_in_t = weight.shape[0]
        if input_shape[0] != c_in_t or c_in_t % groups:
            raise ValueError(f"transposed conv: input has {input_shape[0]} channels, weight expects {c_in_t}")
        out_pad = _per_axis(output_padding, dims, "output_padding", 0)
        if any(o < 0 or o >= max(s, d) for o, s, d in zip(out_pad, stride, dilation)):
            raise ValueError("output_padding must be smaller than the stride or the dilation")
        out_spatial = tuple(
            s * (n - 1) + o + (k - 1) * d + 1 - b - e
            for n, s, o, k, d, b, e in zip(input_shape[1:], stride, out_pad, kernel, dilation, pads_begin, pads_end)
        )
        if min(out_spatial) < 1:
            raise ValueError(f"transposed conv output would be empty: {out_spatial}")
        adjoint_input = (weight.shape[1] * groups, *out_spatial)
        # with output_padding >= stride the convolution has extra outputs that the transposed layer never reads
        return _checked(ConvGeometry(weight, adjoint_input, stride, dilation, pads_begin, pads_end, groups,
                                     output_limit=input_shape[1:]))
    if weight.shape[0] % groups or input_shape[0] != weight.shape[1] * groups:
        raise ValueError(
            f"conv: input has {input_shape[0]} channels, weight {tuple(weight.shape)} with groups={groups} expects "
            f"{weight.shape[1] * groups} and C_out divisible by groups"
        )
    return _checked(ConvGeometry(weight, input_shape, stride, dilation, pads_begin, pads_end, groups))


def _checked(geom: ConvGeometry) -> ConvGeometry:
    if min(geom.output_spatial) < 1:
        raise ValueError(f"the kernel does not fit the padded input: output size {geom.output_spatial}")
    return geom


@dataclass(frozen=True)
class Polyphase:
    """The stride-1 multi-channel circular convolution on m points per axis that equals the strided one on m * s."""

    kernel: torch.Tensor  # (groups, C_out/g, C_in/g * prod(s), *taps), float64
    grid: tuple[int, ...]  # m per axis
    stride: tuple[int, ...]
    used: torch.Tensor  # (C_in/g * prod(s),) bool: zero columns of every block are dropped (norms unchanged)

    @property
    def frequency_grid(self) -> tuple[int, ...]:
        """Frequencies worth visiting per axis: along an axis with a single tap the block does not vary."""
        return tuple(m if taps > 1 else 1 for m, taps in zip(self.grid, self.kernel.shape[3:]))


def polyphase(geom: ConvGeometry) -> Polyphase:
    """Rearrange the (dilated, strided) kernel into phases; see the module docstring for why this is exact."""
    g = geom.groups
    w = geom.weight.to(torch.float64)
    c_out, c_in_g = w.shape[0] // g, w.shape[1]
    w = w.reshape(g, c_out, c_in_g, *geom.kernel)
    grid, taps = [], []
    for n, b, e, k, d, s in zip(geom.input_shape[1:], geom.pads_begin, geom.pads_end, geom.kernel, geom.dilation,
                                geom.stride):
        length = math.ceil((n + b + e) / s) * s
        grid.append(length // s)
        taps.append(((k - 1) * d) // s + 1)
    phases = math.prod(geom.stride)
    out = torch.zeros(g, c_out, c_in_g, *geom.stride, *taps, dtype=torch.float64)
    index_axes = [torch.arange(k) for k in geom.kernel]
    mesh = torch.meshgrid(*index_axes, indexing="ij")
    phase_idx = [(t * d) % s for t, d, s in zip(mesh, geom.dilation, geom.stride)]
    shift_idx = [(t * d) // s for t, d, s in zip(mesh, geom.dilation, geom.stride)]
    out[(slice(None),) * 3 + tuple(phase_idx) + tuple(shift_idx)] = w  # distinct taps land on distinct slots
    kernel = out.reshape(g, c_out, c_in_g * phases, *taps)
    used = kernel.ne(0).flatten(3).any(dim=-1).any(dim=1).any(dim=0)  # input channel x phase with any tap
    return Polyphase(kernel, tuple(grid), geom.stride, used)


def dft_error(kernel: torch.Tensor) -> torch.Tensor:
    """Per-group bound on the spectral-norm error of every computed Fourier block of a polyphase kernel.

    Each axis of the separable transform adds at most (taps + 40) u relative to the sum of |terms| (summation,
    complex products and the twiddle error, which is below 34 u: the angle carries at most 3 relative rounding errors
    of a value below 2 pi, and cos / sin add a few ulps); doubled for the second-order terms and the rounding of the
    absolute sums.
    """
    dims = kernel.ndim - 3
    gamma = 2.0 * sum(k + 40 for k in kernel.shape[3:]) * U64
    abs_sum = kernel.abs().sum(dim=tuple(range(3, 3 + dims)))
    return round_up(frobenius_upper(abs_sum) * gamma)


def _twiddles(m: int, taps: int, frequencies: torch.Tensor) -> torch.Tensor:
    """exp(-2 pi i f a / m) for the given frequencies f and taps a, the angle reduced exactly first."""
    a = torch.arange(taps)
    residues = (frequencies.view(-1, 1) * a.view(1, -1)) % m
    angle = residues.to(torch.float64) * (2.0 * math.pi / m)
    return torch.polar(torch.ones_like(angle), -angle)


def frequency_chunks(pp: Polyphase, max_blocks: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (blocks (B, C_out/g, C_in'), frequency indices (B, D)) over the half spectrum, in chunks.

    The last axis keeps frequencies 0..m//2 (conjugate symmetry of a real kernel); chunks split the first axis;
    groups are folded into B (fastest). Each axis is one product of its twiddles with the taps.
    """
    kernel = pp.kernel[:, :, pp.used].to(torch.complex128)
    g, c_out, c_in = kernel.shape[:3]
    dims = kernel.ndim - 3
    taps_first = kernel.permute(*range(3, 3 + dims), 0, 1, 2).contiguous()  # (*taps, g, co, ci)
    grid = list(pp.frequency_grid)
    freq_axes = [torch.arange(m) for m in grid]
    freq_axes[-1] = torch.arange(grid[-1] // 2 + 1)
    per_first = g * math.prod(len(f) for f in freq_axes[1:])
    step = max(1, max_blocks // per_first)
    for start in range(0, len(freq_axes[0]), step):
        axes = [freq_axes[0][start:start + step], *freq_axes[1:]]
        acc = taps_first.reshape(1, taps_first.shape[0], -1)
        # (done frequencies, taps of this axis, rest): each axis is one batched product with its twiddles, and the
        # blocks come out contiguous, frequencies first and groups fastest
        for axis, (m, freqs) in enumerate(zip(grid, axes)):
            acc = torch.matmul(_twiddles(m, acc.shape[1], freqs), acc)
            if axis + 1 < dims:
                acc = acc.reshape(-1, kernel.shape[4 + axis], acc.shape[-1] // kernel.shape[4 + axis])
        acc = acc.reshape(-1, c_out, c_in)
        mesh = torch.meshgrid(*axes, torch.arange(g), indexing="ij")
        yield acc, torch.stack([c.reshape(-1) for c in mesh[:-1]], dim=-1)


def _unravel(ids: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Row-major multi-indices (len(ids), len(grid)) of flat indices."""
    cols = []
    for size in reversed(grid):
        cols.append(ids % size)
        ids = ids // size
    return torch.stack(cols[::-1], dim=-1) if cols else ids.new_zeros((len(ids), 0))


def plane_wave(geom: ConvGeometry, pp: Polyphase, freq: Sequence[int], vector: torch.Tensor,
               group: int) -> list[torch.Tensor]:
    """Real inputs close to the top singular vector of the circular operator at one frequency, cropped to the layer.

    The complex input x e^{-2 pi i <f, q> / m} (which the circular operator maps through the block K(f)) on the
    polyphase grid (channels = input channel x phase) is mapped back to the strided grid; its real and imaginary
    parts are both returned (one of them attains the block's norm on the circular operator).
    """
    c_in_g = geom.weight.shape[1]
    dims = geom.dims
    phases = geom.stride
    v = torch.zeros(pp.used.numel(), dtype=torch.complex128)
    v[pp.used] = vector.to(torch.complex128)
    v = v.reshape(c_in_g, *phases)
    coords = torch.meshgrid(*[torch.arange(m) for m in pp.grid], indexing="ij")
    angle = sum(c.to(torch.float64) * (2.0 * math.pi * f / m) for c, f, m in zip(coords, freq, pp.grid))
    wave = torch.polar(torch.ones_like(angle), -angle)  # (*m)
    # field[c, *phase, *q] -> strided position q * s + phase
    field = v.view(c_in_g, *phases, *([1] * dims)) * wave.view(1, *([1] * dims), *pp.grid)
    perm = [0]
    for axis in range(dims):
        perm += [1 + dims + axis, 1 + axis]
    full = field.permute(*perm).reshape(c_in_g, *[m * s for m, s in zip(pp.grid, phases)])
    crop = tuple(slice(b, b + n) for b, n in zip(geom.pads_begin, geom.input_shape[1:]))
    full = full[(slice(None),) + crop]
    out = []
    for part in (full.real, full.imag):
        x = torch.zeros(geom.input_shape, dtype=torch.float64)
        x[group * c_in_g:(group + 1) * c_in_g] = part
        out.append(x)
    return out


def abs_row_sums(geom: ConvGeometry) -> torch.Tensor:
    """Row sums of |A| for the zero-padded operator A: |A| applied to ones (float64, one value per output entry)."""
    return _abs_geometry(geom).apply(torch.ones(1, *geom.input_shape, dtype=torch.float64))


def abs_col_sums(geom: ConvGeometry) -> torch.Tensor:
    """Column sums of |A| (the row sums of the adjoint, a transposed convolution): |A|^T applied to ones."""
    x = torch.zeros(1, *geom.input_shape, dtype=torch.float64, requires_grad=True)
    y = _abs_geometry(geom).apply(x)
    return adjoint(y, x, torch.ones_like(y))


def adjoint(y: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``A^T u`` for ``y = A x`` computed from ``x`` (which requires grad), by reverse mode of the scalar <y, u>:
    passing ``u`` as ``grad_outputs`` would do the same, but its first use imports sympy (seconds of CPU)."""
    (grad,) = torch.autograd.grad((y * u).sum(), x)
    return grad


def _abs_geometry(geom: ConvGeometry) -> ConvGeometry:
    return dataclasses.replace(geom, weight=geom.weight.abs().to(torch.float64))
