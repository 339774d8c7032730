"""Bounds of dense and convolutional layers checked against the exact norm of the materialised operator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.lipschitz.bound import LayerBound
from certify.lipschitz.conv import normalize_conv
from certify.lipschitz.linear_norms import conv_bound, dense_bound, gram_iteration_bound, linear_operator_lower

FAST = settings(max_examples=20, deadline=None)
ROUNDING = 1e-9  # an achieved ratio evaluated in float64 may exceed the truth by a few ulps


def materialize(fn, input_shape) -> torch.Tensor:
    size = math.prod(input_shape)
    with torch.no_grad():
        out = fn(torch.eye(size, dtype=torch.float64).reshape(size, *input_shape))
    return out.reshape(size, -1).T


def spectral(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def assert_sound(bound: LayerBound, exact: float, tight: float | None = 1.01) -> None:
    assert bound.lower <= exact * (1 + ROUNDING) + 1e-300
    assert exact <= bound.upper
    if tight is not None:
        assert bound.upper <= exact * tight + 1e-12


def random_weight(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@st.composite
def conv_cases(draw, transposed: bool = False):
    dims = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    c_in_g, c_out_g = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * dims)]
    spatial = []
    for axis in range(dims):
        reach = (kernel[axis] - 1) * dilation[axis] + 1
        floor = 1 if transposed else max(1, reach - pads[axis] - pads[axis + dims])
        spatial.append(floor + draw(st.integers(0, 5)))
    if transposed:
        # keep the transposed output non-empty: it has stride * (n - 1) + reach - pads positions
        for axis in range(dims):
            reach = (kernel[axis] - 1) * dilation[axis] + 1
            while stride[axis] * (spatial[axis] - 1) + reach - pads[axis] - pads[axis + dims] < 1:
                spatial[axis] += 1
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        weight_shape = (c_in_g * groups, c_out_g, *kernel)
        input_shape = (c_in_g * groups, *spatial)
    else:
        out_pad = None
        weight_shape = (c_out_g * groups, c_in_g, *kernel)
        input_shape = (c_in_g * groups, *spatial)
    params = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)
    return random_weight(weight_shape, draw(st.integers(0, 2**31))), input_shape, params, out_pad


def conv_operator(weight, input_shape, params):
    return normalize_conv(weight, input_shape, **params).apply


def conv_transpose_operator(weight, params, out_pad):
    dims = weight.ndim - 2
    pads = params["padding"]
    begin = pads[:dims]
    fn = [F.conv_transpose1d, F.conv_transpose2d][dims - 1]

    def apply(x):
        full = fn(x, weight, stride=params["stride"], dilation=params["dilation"], groups=params["groups"],
                  output_padding=out_pad)
        # ONNX pads: crop begin/end from the full transposed output
        crop = tuple(slice(b, s - e) for b, e, s in zip(begin, pads[dims:], full.shape[2:]))
        return full[(slice(None), slice(None)) + crop]

    return apply


# ---- dense ------------------------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31), st.sampled_from([0, 1 << 20]))
def test_dense_l2_bounds_bracket_the_exact_norm(rows, cols, seed, exact_max_elems):
    weight = random_weight((rows, cols), seed)
    bound = dense_bound(weight, exact_max_elems=exact_max_elems)
    assert_sound(bound, spectral(weight))
    assert bound.method == ("svd" if exact_max_elems else "gram+lanczos+cholesky-certificate")


@FAST
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31))
def test_dense_linf_is_the_exact_induced_inf_norm(rows, cols, seed):
    weight = random_weight((rows, cols), seed)
    exact = float(weight.abs().sum(dim=1).max())
    bound = dense_bound(weight, norm="linf")
    assert bound.norm == "linf" and bound.exact
    assert bound.lower <= exact <= bound.upper <= exact * (1 + 1e-12)


def test_margins_make_the_upper_bound_strictly_larger_than_exact_values():
    # 3 I and a 1x1 convolution by 2 I have exactly representable norms: the margin must still lift the bound above
    assert dense_bound(3 * torch.eye(5, dtype=torch.float64)).upper > 3.0
    assert dense_bound(3 * torch.eye(5, dtype=torch.float64), exact_max_elems=0).upper > 3.0
    conv = conv_bound(2 * torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1), (3, 6, 6), exact_max_elems=0)
    assert 2.0 < conv.upper < 2.0 * (1 + 2e-3)  # Gram iteration stops at 1e-3 of the best lower estimate
    assert conv.lower == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_gram_iteration_survives_extreme_scales(scale):
    weight = random_weight((40, 30), 3)
    exact = spectral(weight)
    upper = gram_iteration_bound(weight * scale)
    assert exact * scale <= upper <= exact * scale * 1.01


def test_gram_iteration_on_blocks_and_rank_one():
    blocks = torch.randn(6, 9, 7, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    blocks[2] = 0
    uppers = gram_iteration_bound(blocks)
    exact = torch.linalg.matrix_norm(blocks, ord=2)
    assert bool((uppers >= exact).all()) and bool((uppers <= exact * 1.01 + 1e-300).all())
    u, v = torch.randn(50, 1, dtype=torch.float64), torch.randn(1, 20, dtype=torch.float64)
    rank_one = u @ v
    assert spectral(rank_one) <= gram_iteration_bound(rank_one) <= spectral(rank_one) * (1 + 1e-6)


def test_power_iteration_approaches_the_norm_from_below():
    weight = random_weight((30, 20), 7)
    value, vector = linear_operator_lower(lambda x: x @ weight.to(x.dtype).T, (20,), iters=200, seed=0)
    exact = spectral(weight)
    assert value <= exact * (1 + ROUNDING)
    assert value >= exact * 0.999
    assert vector.shape == (20,)


# ---- convolution ------------------------------------------------------------------------------------------------


@FAST
@given(conv_cases())
def test_conv_bounds_bracket_the_materialised_operator(case):
    weight, input_shape, params, _ = case
    exact = spectral(materialize(conv_operator(weight, input_shape, params), input_shape))
    assert_sound(conv_bound(weight, input_shape, **params), exact)


@FAST
@given(conv_cases())
def test_fourier_route_is_sound_on_any_geometry(case):
    weight, input_shape, params, _ = case
    exact = spectral(materialize(conv_operator(weight, input_shape, params), input_shape))
    bound = conv_bound(weight, input_shape, exact_max_elems=0, gram_max_side=0, **params)
    assert bound.method.startswith(("fourier-circular", "tap-separable"))
    assert_sound(bound, exact, tight=None)


@FAST
@given(conv_cases(transposed=True))
def test_transposed_conv_bounds_bracket_the_materialised_operator(case):
    weight, input_shape, params, out_pad = case
    exact = spectral(materialize(conv_transpose_operator(weight, params, out_pad), input_shape))
    assert_sound(conv_bound(weight, input_shape, transposed=True, output_padding=out_pad, **params), exact)
    fourier = conv_bound(weight, input_shape, transposed=True, output_padding=out_pad, exact_max_elems=0,
                         gram_max_side=0, **params)
    assert_sound(fourier, exact, tight=None)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**31))
def test_fourier_route_is_tight_when_the_input_is_large(stride, dilation_, channels, seed):
    # 1-D, 3 taps, 96 samples: the circular embedding is within 1% of the zero-padded operator
    weight = random_weight((channels, channels, 3), seed)
    params = dict(stride=stride, padding=[1, 1], dilation=dilation_)
    input_shape = (channels, 96)
    exact = spectral(materialize(conv_operator(weight, input_shape, params), input_shape))
    assert_sound(conv_bound(weight, input_shape, exact_max_elems=0, **params), exact)


def test_fourier_route_is_tight_in_2d_with_stride():
    weight = random_weight((3, 2, 3, 3), 11)
    params = dict(stride=2, padding=[1, 1, 1, 1])
    input_shape = (2, 24, 24)
    exact = spectral(materialize(conv_operator(weight, input_shape, params), input_shape))
    assert_sound(conv_bound(weight, input_shape, exact_max_elems=0, **params), exact)


@FAST
@given(conv_cases())
def test_conv_linf_is_the_exact_induced_inf_norm(case):
    weight, input_shape, params, _ = case
    exact = float(materialize(conv_operator(weight, input_shape, params), input_shape).abs().sum(dim=1).max())
    bound = conv_bound(weight, input_shape, norm="linf", **params)
    assert bound.lower <= exact <= bound.upper <= exact * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(conv_cases(transposed=True))
def test_transposed_conv_linf_is_the_exact_induced_inf_norm(case):
    weight, input_shape, params, out_pad = case
    matrix = materialize(conv_transpose_operator(weight, params, out_pad), input_shape)
    exact = float(matrix.abs().sum(dim=1).max())
    bound = conv_bound(weight, input_shape, norm="linf", transposed=True, output_padding=out_pad, **params)
    assert bound.lower <= exact <= bound.upper <= exact * (1 + 1e-12)


def test_three_dimensional_convolution():
    weight = random_weight((3, 2, 2, 3, 2), 5)
    params = dict(stride=(2, 1, 2), padding=[1, 0, 1, 0, 1, 1], dilation=(1, 2, 1))
    input_shape = (2, 5, 6, 5)
    exact = spectral(materialize(conv_operator(weight, input_shape, params), input_shape))
    assert_sound(conv_bound(weight, input_shape, **params), exact)
    assert_sound(conv_bound(weight, input_shape, exact_max_elems=0, **params), exact, tight=None)


# ---- results and errors -----------------------------------------------------------------------------------------


def test_layer_bound_ratio_and_dict():
    bound = LayerBound(upper=2.0, lower=1.6, method="svd")
    assert bound.ratio() == pytest.approx(1.25)
    assert bound.to_dict()["ratio"] == pytest.approx(1.25)
    assert LayerBound(upper=None, lower=None, method="unbounded", reason="x").ratio() is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: dense_bound(torch.ones(3)),
        lambda: dense_bound(torch.tensor([[float("nan")]])),
        lambda: dense_bound(torch.ones(2, 2), norm="l1"),
        lambda: conv_bound(torch.ones(2, 3, 3, 3), (2, 8, 8)),  # channel mismatch
        lambda: conv_bound(torch.ones(2, 1, 3, 3), (1, 8, 8), padding=[-1, 0, 0, 0]),
        lambda: conv_bound(torch.ones(2, 1, 3, 3), (1, 8, 8), stride=0),
        lambda: conv_bound(torch.ones(2, 1, 5, 5), (1, 2, 2)),  # kernel larger than the input
        lambda: conv_bound(torch.ones(3, 2, 3, 3), (4, 8, 8), groups=2),  # C_out not divisible by groups
        lambda: conv_bound(torch.ones(2, 1, 3, 3), (1, 8, 8), padding=[1, 1]),  # pads need 4 values
        lambda: conv_bound(torch.ones(1, 2, 3), (1, 8), transposed=True, stride=2, output_padding=2),
    ],
)
def test_bad_parameters_raise_clear_errors(call):
    with pytest.raises(ValueError):
        call()
