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

import dataclasses
import math

import torch

from certify.lipschitz.conv import ConvGeometry
from certify.lipschitz.gram import U64, round_up

MAX_SPATIAL_ENTRIES = 1 << 21
REMAINDER_TOL = 1e-6


def separable_bound(geom: ConvGeometry) -> tuple[float, torch.Tensor] | None:
    """(guaranteed upper bound, an input achieving close to it) when every group's kernel is tap-separable, else
    None."""
    from certify.lipschitz.linear_norms import _materialize, svd_relative_error

    spatial_in, spatial_out = math.prod(geom.input_shape[1:]), math.prod(geom.output_spatial)
    if spatial_in * spatial_out > MAX_SPATIAL_ENTRIES:
        return None
    g = geom.groups
    w = geom.weight.to(torch.float64)
    c_out, c_in = w.shape[0] // g, w.shape[1]
    taps = math.prod(geom.kernel)
    best, best_input = 0.0, None
    for group in range(g):
        k = w[group * c_out:(group + 1) * c_out].reshape(c_out * c_in, taps)
        u_, s_, vh_ = torch.linalg.svd(k, full_matrices=False)
        channel = (u_[:, 0] * s_[0]).reshape(c_out, c_in)
        profile = vh_[0]
        main = torch.outer(channel.reshape(-1), profile)
        remainder = (k - main).reshape(c_out, c_in, taps)
        # |computed - exact remainder| <= 2u (|K| + |U a|) entrywise
        slack = (k.abs() + main.abs()).reshape(c_out, c_in, taps) * (2.2 * U64)
        rest = float(torch.linalg.vector_norm(remainder, dim=(0, 1)).sum() + torch.linalg.vector_norm(
            slack, dim=(0, 1)).sum())
        single = dataclasses.replace(geom, weight=profile.reshape(1, 1, *geom.kernel), groups=1,
                                     input_shape=(1, *geom.input_shape[1:]))
        spatial = _materialize(single.apply, single.input_shape)  # exact: one tap per entry
        norms, vectors = [], []
        for matrix in (channel, spatial):
            _, sv, vh = torch.linalg.svd(matrix, full_matrices=False)
            norms.append(round_up(float(sv[0]) / (1.0 - svd_relative_error(*matrix.shape))))
            vectors.append(vh[0])
        value = round_up(round_up(norms[0] * norms[1]) + round_up(rest * (1 + 1e-9)))
        if rest > REMAINDER_TOL * value:
            return None
        if value > best:
            best = value
            x = torch.zeros(geom.input_shape, dtype=torch.float64)
            top = torch.outer(vectors[0], vectors[1])
            x[group * c_in:(group + 1) * c_in] = top.reshape(c_in, *geom.input_shape[1:])
            best_input = x
    if best_input is None:
        best_input = torch.zeros(geom.input_shape, dtype=torch.float64)
    return best, best_input
