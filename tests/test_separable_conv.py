"""Tap-separable kernels (constant filters, a channel matrix times a spatial profile) get the exact zero-padded
norm on small maps, where the circular embedding over-estimates it; other kernels are left to the Fourier bound."""

from __future__ import annotations

import pytest
import torch

from certify.lipschitz.conv import normalize_conv
from certify.lipschitz.exact import materialize as _materialize
from certify.lipschitz.linear_norms import conv_bound
from certify.lipschitz.separable_conv import separable_bound


def _exact(geom) -> float:
    return float(torch.linalg.matrix_norm(_materialize(geom.apply, geom.input_shape), ord=2))


CASES = [  # (weight shape, input shape, conv kwargs)
    ((4, 3, 3, 3), (3, 7, 7), {"padding": [1] * 4}),
    ((4, 3, 3, 3), (3, 8, 8), {"padding": [1, 0, 1, 0], "stride": 2}),
    ((6, 2, 3, 3), (4, 6, 6), {"padding": [2] * 4, "dilation": 2, "groups": 2}),
    ((3, 2, 3), (3, 5), {"padding": [1, 1], "transposed": True, "stride": 2}),
]


@pytest.mark.parametrize("shape, input_shape, kwargs", CASES)
def test_separable_kernels_get_the_exact_norm(shape, input_shape, kwargs):
    gen = torch.Generator().manual_seed(len(shape))
    channels = torch.randn(*shape[:2], *([1] * (len(shape) - 2)), generator=gen, dtype=torch.float64)
    profile = torch.rand(shape[2:], generator=gen, dtype=torch.float64)
    weight = channels * profile
    geom = normalize_conv(weight, input_shape, **kwargs)
    upper, x = separable_bound(geom)
    exact = _exact(geom)
    assert exact <= upper <= exact * (1 + 1e-9)
    achieved = float(torch.linalg.vector_norm(geom.apply(x.unsqueeze(0))) / torch.linalg.vector_norm(x))
    assert achieved >= exact * (1 - 1e-9)


def test_constant_kernel_on_a_small_map_is_tight_where_the_circular_bound_is_not():
    weight = torch.full((8, 8, 3, 3), 0.02, dtype=torch.float64)
    bound = conv_bound(weight, (8, 7, 7), padding=[1] * 4, exact_max_elems=0)
    assert bound.method.startswith("tap-separable")
    assert bound.ratio() <= 1 + 1e-8
    assert bound.upper < 0.02 * 8 * 9 * 0.95  # the circular bound: |sum of taps| * 8


def test_general_kernels_are_not_taken():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert separable_bound(normalize_conv(weight, (3, 7, 7), padding=[1] * 4)) is None


def test_large_maps_use_the_per_axis_factors_of_the_profile():
    gen = torch.Generator().manual_seed(5)
    profile = torch.outer(torch.rand(3, generator=gen, dtype=torch.float64),
                          torch.rand(2, generator=gen, dtype=torch.float64))
    weight = torch.randn(2, 1, 1, 1, generator=gen, dtype=torch.float64) * profile
    geom = normalize_conv(weight, (1, 40, 41), padding=[1, 0, 1, 1], stride=[1, 2])
    upper, x = separable_bound(geom)
    exact = _exact(geom)
    assert exact <= upper <= exact * (1 + 2e-6)  # residuals up to REMAINDER_TOL
    assert float(torch.linalg.vector_norm(geom.apply(x.unsqueeze(0))) / torch.linalg.vector_norm(x)) >= exact * 0.999


def test_the_shortcut_only_declines_kernels_far_from_rank_one():
    from certify.lipschitz.separable_conv import REMAINDER_TOL, _clearly_not_separable

    gen = torch.Generator().manual_seed(9)
    rank_one = torch.outer(torch.randn(600, dtype=torch.float64, generator=gen),
                           torch.randn(9, dtype=torch.float64, generator=gen))
    noise = torch.randn(600, 9, dtype=torch.float64, generator=gen)
    assert _clearly_not_separable(noise)
    assert not _clearly_not_separable(rank_one)
    near = rank_one + noise * (REMAINDER_TOL * float(torch.linalg.matrix_norm(rank_one, 2)) / 1e3 / 25)
    assert not _clearly_not_separable(near)  # left to the full test
