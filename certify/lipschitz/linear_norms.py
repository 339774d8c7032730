"""Operator-norm bounds of dense and convolutional layers: a guaranteed upper bound and an achieved lower bound.

l2: dense layers use an SVD in float64 when small and otherwise one Gram product certified by a Cholesky
factorisation at a Lanczos estimate (`certify.lipschitz.cholesky`); convolutions use the circular/polyphase Fourier
embedding (`certify.lipschitz.conv`) with the same certificate over all frequency blocks at once (Gram iteration for
the blocks it misses), or, on small maps where the circular embedding is loose, the exact zero-padded operator
(`certify.lipschitz.padded_gram`). Lower bounds come from power iteration on the real operator, so upper / lower
measures how far the guaranteed bound can be from the truth. linf: the induced inf-norm is the largest absolute row
sum, exact for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from certify.lipschitz import padded_gram
from certify.lipschitz.bound import LayerBound
from certify.lipschitz.cholesky import certified_block_norms
from certify.lipschitz.conv import (
    ConvGeometry,
    abs_col_sums,
    abs_row_sums,
    adjoint,
    dft_error,
    frequency_chunks,
    normalize_conv,
    plane_wave,
    polyphase,
)
from certify.lipschitz.exact import materialize, svd_relative_error
from certify.lipschitz.gram import gram_bounds, matmul_gamma, round_up
from certify.lipschitz.gram_top import certified_norm
from certify.lipschitz.separable_conv import separable_bound

__all__ = ["conv_bound", "dense_bound", "gram_iteration_bound", "linear_operator_lower"]

_BLOCK_BYTES = 1 << 27  # Fourier blocks formed at once
_LOWER_TOLERANCE = 1e-4  # power iteration stops once the lower bound is this close to the upper one
_BLOCK_TOLERANCE = 1e-4  # the certified maximum over Fourier blocks is within this of the best block estimate
_SVD_MAX_ELEMS = 1 << 14  # above, a Gram matrix certified by Cholesky (`certify.lipschitz.gram_top`) beats the SVD
_EXACT_GAP = 2e-3  # a larger upper / lower on a map whose Gram matrix fits (`padded_gram`): bound it exactly
_EXACT_METHOD = "zero-padded-gram+lanczos+cholesky-certificate"
_GRAM_TOP_MAX_SIDE = 4096  # largest Gram matrix formed for a dense layer (128 MiB); wider on both sides: Gram iteration


def gram_iteration_bound(matrix_or_blocks: torch.Tensor, steps: int = 12) -> float | torch.Tensor:
    """Guaranteed upper bound of sigma_1 by Gram iteration: a float for a matrix, a (B,) tensor for (B, p, q) blocks.

    The floating-point margin is derived in `certify.lipschitz.gram`; each bound is within about 1e-3 of sigma_1
    unless ``steps`` runs out first.
    """
    if matrix_or_blocks.ndim == 2:
        return float(gram_bounds(matrix_or_blocks.unsqueeze(0), steps=steps)[0][0])
    return gram_bounds(matrix_or_blocks, steps=steps, prune=False)[0]


def linear_operator_lower(
    fn: Callable[[torch.Tensor], torch.Tensor],
    input_shape: Sequence[int],
    *,
    iters: int = 30,
    seed: int = 0,
    init: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    target: float | None = None,
) -> tuple[float, torch.Tensor]:
    """Power iteration on A^T A for the linear map ``fn`` (adjoint by autograd); returns ||A v|| / ||v|| and v.

    ``fn`` takes a batch (1, *input_shape) and must follow the input's dtype: the iterations run in ``dtype`` and
    the returned value is evaluated once more in float64, so it is an achieved ratio (a lower bound of the norm up to
    the rounding of that one float64 evaluation). Iteration stops early once the ratio reaches ``target``.
    """
    shape = (1, *[int(v) for v in input_shape])
    if init is None:
        v = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        v = init.detach().reshape(shape).to(torch.float64)
    v = v.to(dtype)
    for _ in range(max(0, iters)):
        norm = torch.linalg.vector_norm(v)
        if not bool(norm > 0) or not bool(torch.isfinite(norm)):
            break
        x = (v / norm).requires_grad_(True)
        y = fn(x)
        if target is not None and float(torch.linalg.vector_norm(y.detach())) >= target:
            v = x.detach()
            break
        v = adjoint(y, x, y.detach())
    return _achieved_ratio(fn, v), v.detach().reshape(shape[1:])


def _achieved_ratio(fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> float:
    v64 = v.detach().to(torch.float64)
    norm = torch.linalg.vector_norm(v64)
    if not bool(norm > 0) or not bool(torch.isfinite(norm)):
        return 0.0
    with torch.no_grad():
        return float(torch.linalg.vector_norm(fn(v64)) / norm)


def dense_bound(
    weight: torch.Tensor,
    *,
    norm: str = "l2",
    power_iters: int = 30,
    exact_max_elems: int = 1 << 20,
) -> LayerBound:
    """Bounds of x -> W x for W of shape (out, in)."""
    start = time.perf_counter()
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError("dense weight must be a 2-D tensor (out, in)")
    if not torch.isfinite(weight).all():
        raise ValueError("dense weight has non-finite values")
    w = weight.detach().to(torch.float64)
    if norm == "linf":
        return _linf_bound(w.abs().sum(dim=1), w.shape[1], start)
    _check_norm(norm)
    if w.numel() == 0:
        return LayerBound(0.0, 0.0, "svd", exact=True, ms=_ms(start))

    def apply(x: torch.Tensor) -> torch.Tensor:
        return x @ w.to(x.dtype).T

    if w.numel() <= min(exact_max_elems, _SVD_MAX_ELEMS):
        _, singular, vh = torch.linalg.svd(w, full_matrices=False)
        upper = round_up(float(singular[0]) / (1.0 - svd_relative_error(*w.shape)))
        return LayerBound(upper, _achieved_ratio(apply, vh[0]), "svd", exact=True, ms=_ms(start))
    if w.numel() <= exact_max_elems or (exact_max_elems > 0 and min(w.shape) <= _GRAM_TOP_MAX_SIDE):
        # the same accuracy as the SVD at a fraction of its cost (and of Gram iteration's on large layers)
        upper, _, vector = certified_norm(w)
        return LayerBound(upper, _achieved_ratio(apply, vector), "gram+cholesky-certificate", exact=True,
                          ms=_ms(start))
    uppers, _, vectors = certified_block_norms(w.unsqueeze(0), rel_tol=_BLOCK_TOLERANCE)
    init = _right_vector(w, vectors[0])
    lower, _ = linear_operator_lower(apply, (w.shape[1],), iters=power_iters, init=init, dtype=torch.float64,
                                     target=float(uppers[0]) / (1.0 + _LOWER_TOLERANCE))
    return LayerBound(float(uppers[0]), lower, "gram+lanczos+cholesky-certificate", ms=_ms(start))


def conv_bound(
    weight: torch.Tensor,
    input_shape: Sequence[int],
    *,
    stride=1,
    padding=None,
    dilation=1,
    groups: int = 1,
    transposed: bool = False,
    output_padding=None,
    norm: str = "l2",
    power_iters: int = 30,
    exact_max_elems: int = 1 << 20,
    gram_max_side: int | None = None,
) -> LayerBound:
    """Bounds of the zero-padded N-d convolution (N = 1, 2, 3) on inputs of shape (C, *spatial).

    ``padding`` holds explicit per-side pads [begin..., end...] (ONNX order); ``weight`` is (C_out, C_in / groups,
    *k) for a convolution and (C_in, C_out / groups, *k) for a transposed one (whose norm is its adjoint's).
    When the operator as a dense matrix has at most ``exact_max_elems`` entries it is materialised and bounded
    exactly (SVD); otherwise by the Fourier embedding, which is tight for inputs large compared with the kernel, and
    where it is not and the Gram matrix has a side of at most ``gram_max_side`` (default: `padded_gram.fits`; 0: never)
    by that matrix.
    """
    start = time.perf_counter()
    geom = normalize_conv(weight.detach(), input_shape, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, transposed=transposed, output_padding=output_padding)
    if norm == "linf":
        sums = abs_col_sums(geom) if transposed else abs_row_sums(geom)
        fan_in = geom.weight[0].numel()
        return _linf_bound(sums.flatten(), fan_in, start, method="abs-row-sum")
    _check_norm(norm)
    in_size, out_size = math.prod(geom.input_shape), geom.weight.shape[0] * math.prod(geom.output_spatial)
    if in_size * out_size <= exact_max_elems:
        matrix = materialize(geom.apply, geom.input_shape)
        exact = dense_bound(matrix, power_iters=power_iters, exact_max_elems=exact_max_elems)
        return LayerBound(exact.upper, exact.lower, "dense-svd", exact=True, ms=_ms(start))
    separable = separable_bound(geom)
    if separable is not None:
        upper, init = separable
        method = "tap-separable (exact for zero padding)"
    else:
        upper, _, best = _fourier_upper(geom)
        method = "fourier-circular" + ("+polyphase" if max(geom.stride) > 1 else "") + "+cholesky-certificate"
        init = _best_plane_wave(geom, best) if best is not None else None
    lower, vector = linear_operator_lower(geom.apply, geom.input_shape, iters=power_iters, init=init,
                                          target=upper / (1.0 + _LOWER_TOLERANCE))
    if upper > lower * (1.0 + _EXACT_GAP) and padded_gram.fits(geom, max_side=gram_max_side):
        # a small map, where the boundary pulls the zero-padded norm below the circular bound
        exact_upper, vector = padded_gram.exact_norm(geom, start=vector)
        lower = max(lower, _achieved_ratio(geom.apply, vector.unsqueeze(0)))
        if exact_upper < upper:
            upper, method = exact_upper, _EXACT_METHOD
    return LayerBound(upper, min(lower, upper), method, exact=method == _EXACT_METHOD, ms=_ms(start))


def _fourier_upper(geom: ConvGeometry):
    """Max over Fourier blocks of the guaranteed block bounds, plus the best block's (freq, group, right vector)."""
    pp = polyphase(geom)
    if not bool(pp.used.any()):  # an all-zero kernel: the zero operator (and no block to form)
        return 0.0, 0.0, None
    errors = dft_error(pp.kernel)
    g, c_out, c_in = pp.kernel.shape[:3]
    max_blocks = max(1, _BLOCK_BYTES // (16 * c_out * c_in))
    upper, best_lower, best = 0.0, 0.0, None
    for blocks, freqs in frequency_chunks(pp, max_blocks):
        group = torch.arange(blocks.shape[0]) % g
        uppers, lowers, vectors = certified_block_norms(blocks, floor=best_lower, rel_tol=_BLOCK_TOLERANCE)
        uppers = round_up(uppers + errors[group])
        upper = max(upper, float(uppers.max()))
        i = int(lowers.argmax())
        if float(lowers[i]) > best_lower:
            best_lower = float(lowers[i])
            best = (freqs[i].tolist(), int(group[i]), _right_vector(blocks[i], vectors[i]), pp)
    return upper, best_lower, best


def _right_vector(block: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """The Gram vector lives in the smaller side of the block; map a left vector to the input side."""
    block = block.to(vector.dtype)
    if vector.shape[0] == block.shape[1]:
        return vector
    return block.mH @ vector


def _best_plane_wave(geom: ConvGeometry, best) -> torch.Tensor | None:
    freq, group, vector, pp = best
    candidates = plane_wave(geom, pp, freq, vector, group)
    ratios = [_achieved_ratio(geom.apply, c.unsqueeze(0)) for c in candidates]
    return candidates[max(range(len(candidates)), key=ratios.__getitem__)]


def _linf_bound(abs_row_sums: torch.Tensor, fan_in: int, start: float, method: str = "row-sum") -> LayerBound:
    """Exact induced inf-norm from float64 absolute row sums, widened by the summation error either way."""
    top = float(abs_row_sums.max()) if abs_row_sums.numel() else 0.0
    gamma = matmul_gamma(max(fan_in, 1))
    return LayerBound(round_up(top * (1.0 + gamma)), top * (1.0 - gamma), method, exact=True, ms=_ms(start),
                      norm="linf")


def _check_norm(norm: str) -> None:
    if norm not in ("l2", "linf"):
        raise ValueError(f"unknown norm {norm!r}: expected 'l2' or 'linf'")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
