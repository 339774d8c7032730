"""The exact zero-padded convolution norm of small maps: never below the norm of the materialised operator (SVD) and
within 1e-8 of it, for strides, dilations, uneven pads, groups, 1-D and transposed layers; and `conv_bound` uses it
where the circular embedding is loose."""

from __future__ import annotations

import math

import pytest
import torch

from certify.lipschitz import padded_gram
from certify.lipschitz.conv import normalize_conv
from certify.lipschitz.exact import materialize
from certify.lipschitz.linear_norms import conv_bound

CPU = torch.device("cpu")
CASES = [
    ((6, 4, 3, 3), (4, 5, 5), {"padding": [1, 1, 1, 1]}),
    ((6, 4, 3, 3), (4, 7, 6), {"stride": 2, "padding": [1, 0, 1, 1]}),  # output side smaller
    ((3, 8, 3, 3), (8, 5, 5), {"padding": [1, 1, 1, 1]}),
    ((4, 4, 3, 2), (4, 6, 5), {"dilation": 2, "padding": [2, 1, 2, 0]}),
    ((4, 2, 3, 3), (4, 5, 5), {"groups": 2, "padding": [1, 1, 1, 1]}),
    ((5, 3, 3), (3, 9), {"padding": [1, 1], "stride": 2}),
    ((4, 6, 3, 3), (4, 4, 4), {"transposed": True, "stride": 2, "padding": [1, 1, 1, 1], "output_padding": 1}),
]


def _weight(shape, seed, scale=1.0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("scale", [1e-150, 1.0, 1e100])
def test_exact_norm_matches_the_materialised_operator(index, scale):
    shape, input_shape, kwargs = CASES[index]
    geom = normalize_conv(_weight(shape, index, scale), input_shape, **kwargs)
    exact = float(torch.linalg.svdvals(materialize(geom.apply, geom.input_shape))[0])
    upper, x = padded_gram.exact_norm(geom, CPU)
    achieved = float(torch.linalg.vector_norm(geom.apply(x.unsqueeze(0))) / torch.linalg.vector_norm(x))
    assert exact < upper <= exact * (1 + 1e-8)
    assert exact * (1 - 1e-9) <= achieved <= upper


def test_zero_and_size_limit():
    geom = normalize_conv(torch.zeros(3, 2, 3, 3, dtype=torch.float64), (2, 4, 4), padding=[1, 1, 1, 1])
    assert padded_gram.exact_norm(geom, CPU)[0] == 0.0
    assert padded_gram.gram_side(geom) == 32
    assert padded_gram.fits(geom, CPU) and not padded_gram.fits(geom, CPU, max_side=31)


def test_conv_bound_is_exact_on_small_maps_where_the_circular_bound_is_loose():
    # a random 3 x 3 layer on a 7 x 7 map: the circular embedding is ~3 % above the zero-padded norm
    weight = _weight((48, 48, 3, 3), 11, math.sqrt(2 / (9 * 48)))
    geom = normalize_conv(weight, (48, 7, 7), padding=[1, 1, 1, 1])
    exact = float(torch.linalg.svdvals(materialize(geom.apply, geom.input_shape))[0])
    bound = conv_bound(weight, (48, 7, 7), padding=[1, 1, 1, 1])
    assert bound.method == "zero-padded-gram+lanczos+cholesky-certificate"
    assert exact < bound.upper <= exact * (1 + 1e-8)
    assert bound.exact and bound.lower <= exact * (1 + 1e-12) and bound.upper <= bound.lower * (1 + 1e-6)
