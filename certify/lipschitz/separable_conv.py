"""Exact norm of a zero-padded convolution whose kernel is a channel matrix times one spatial tap profile.

When K[o, i, t] = U[o, i] a[t] (constant or separable filters), the layer is U (x) B, with B the single-channel
zero-padded convolution by a on the real input grid (stride, dilation and pads included), so its norm is
||U|| ||B|| exactly, whatever the map size: the circular embedding over-estimates B on small maps (a 3 x 3 box filter
on 7 x 7: 9 against 8.11). For a general kernel the best such term is the leading singular pair of K reshaped to
(C_out C_in) x taps; the remainder E = K - U a is another convolution with ||T_E|| <= sum_t ||E_t||_F (each tap is
a truncated shift, of norm <= 1). The bound is used when that remainder is negligible (below ``REMAINDER_TOL`` of the
main term); groups are independent blocks (the maximum over groups). B is materialised, so only maps up to
``MAX_SPATIAL_ENTRIES`` input x output positions qualify; larger maps are tight under the circular embedding.
"""

from __future__ import annotations

import math

import torch

from certify.lipschitz.conv import ConvGeometry
from certify.lipschitz.exact import materialize, svd_top
from certify.lipschitz.gram import U64, round_up

MAX_SPATIAL_ENTRIES = 1 << 21
REMAINDER_TOL = 1e-6


def _spatial(geom: ConvGeometry, profile: torch.Tensor) -> tuple[float, float, torch.Tensor] | None:
    """(upper bound of ||B||, bound of the part left out, top input vector) for the single-channel convolution B by
    the tap profile: materialised when small; on 2-D maps otherwise as B_x (x) B_y for the leading rank-one factor
    p q^T of the profile (a residual r adds at most sum |r_t|, each tap being a truncated shift)."""
    def operator(weight, axes):
        sub = ConvGeometry(weight, (1, *[geom.input_shape[1 + a] for a in axes]), *[
            tuple(v[a] for a in axes) for v in (geom.stride, geom.dilation, geom.pads_begin, geom.pads_end)], 1,
            None if geom.output_limit is None else tuple(geom.output_limit[a] for a in axes))
        return materialize(sub.apply, sub.input_shape)  # exact: one tap per entry

    spatial_in, spatial_out = math.prod(geom.input_shape[1:]), math.prod(geom.output_spatial)
    if spatial_in * spatial_out <= MAX_SPATIAL_ENTRIES:
        norm, vector = svd_top(operator(profile.reshape(1, 1, *geom.kernel), range(geom.dims)))
        return norm, 0.0, vector
    if geom.dims != 2:
        return None
    grid = profile.reshape(geom.kernel)
    u_, s_, vh_ = torch.linalg.svd(grid)
    p, q = u_[:, 0] * s_[0], vh_[0]
    main = torch.outer(p, q)
    rest = float((grid - main).abs().sum() + (grid.abs() + main.abs()).sum() * 2.2 * U64) * (1 + 1e-9)
    (nx, vx), (ny, vy) = (svd_top(operator(f.reshape(1, 1, -1), (a,))) for a, f in ((0, p), (1, q)))
    return round_up(nx * ny), rest, torch.outer(vx, vy).reshape(-1)


def _clearly_not_separable(k: torch.Tensor) -> bool:
    """Whether the (C_out C_in) x taps matrix is far from rank one, judged from the taps x taps Gram matrix's
    eigenvalues (a small product, where the SVD of the tall matrix costs a large share of a layer's bound): the
    squared Frobenius norm of the best remainder is the sum of all but the top one. Only a shortcut past the full
    test: a kernel near the threshold still gets it."""
    values = torch.linalg.eigvalsh(k.T @ k)
    return float(values[:-1].clamp_min(0).sum()) > (4 * REMAINDER_TOL) ** 2 * float(values[-1])


def separable_bound(geom: ConvGeometry) -> tuple[float, torch.Tensor] | None:
    """(guaranteed upper bound, an input achieving close to it) when every group's kernel is tap-separable, else
    None."""
    g = geom.groups
    w = geom.weight.to(torch.float64)
    c_out, c_in = w.shape[0] // g, w.shape[1]
    taps = math.prod(geom.kernel)
    best, best_input = 0.0, None
    for group in range(g):
        k = w[group * c_out:(group + 1) * c_out].reshape(c_out * c_in, taps)
        if _clearly_not_separable(k):
            return None
        u_, s_, vh_ = torch.linalg.svd(k, full_matrices=False)
        channel = (u_[:, 0] * s_[0]).reshape(c_out, c_in)
        profile = vh_[0]
        main = torch.outer(channel.reshape(-1), profile)
        remainder = (k - main).reshape(c_out, c_in, taps)
        # |computed - exact remainder| <= 2u (|K| + |U a|) entrywise
        slack = (k.abs() + main.abs()).reshape(c_out, c_in, taps) * (2.2 * U64)
        rest = float(torch.linalg.vector_norm(remainder, dim=(0, 1)).sum() + torch.linalg.vector_norm(
            slack, dim=(0, 1)).sum())
        if rest > REMAINDER_TOL * float(s_[0]):
            return None
        spatial = _spatial(geom, profile)
        if spatial is None:
            return None
        b_norm, b_rest, b_vector = spatial
        u_norm, u_vector = svd_top(channel)
        main_norm = round_up(u_norm * b_norm)
        left = round_up(round_up(rest * (1 + 1e-9)) + round_up(u_norm * b_rest))
        if left > REMAINDER_TOL * main_norm:
            return None
        value = round_up(main_norm + left)
        if value > best:
            best = value
            x = torch.zeros(geom.input_shape, dtype=torch.float64)
            top = torch.outer(u_vector, b_vector)
            x[group * c_in:(group + 1) * c_in] = top.reshape(c_in, *geom.input_shape[1:])
            best_input = x
    if best_input is None:
        best_input = torch.zeros(geom.input_shape, dtype=torch.float64)
    return best, best_input
