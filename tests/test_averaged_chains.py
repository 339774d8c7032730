"""The averaged-operator (Combettes-Pesquet) chain bound: never below ||W_m D ... D W_1|| for any diagonal D in
[0, 1] (checked on the real zero-padded convolutions, by enumeration for tiny sizes), and below the product."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import certify
from certify.lipschitz import network_bound
from certify.lipschitz.averaged import averaged_bound, chain_bound, conv_products, split_products
from certify.lipschitz.empirical import jacobian_norms
from certify.lipschitz.lifting import ConvLayer


def _sigma(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m, ord=2))


def test_two_layers_is_the_mean_of_the_product_norm_and_the_norm_product():
    torch.manual_seed(0)
    w1, w2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    value, _ = chain_bound([w1, w2], [1.0])
    expected = (_sigma(w2 @ w1) + _sigma(w2) * _sigma(w1)) / 2
    assert expected <= value <= expected * (1 + 2e-3)  # Gram iteration stops within 1e-3


def test_dense_chain_is_above_every_vertex_of_the_activation_box():
    torch.manual_seed(1)
    ws = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64),
          torch.randn(2, 4, dtype=torch.float64)]
    value, _ = chain_bound(ws, [1.0, 1.0])
    # the Jacobian norm is convex in each D_i, so its maximum over the box is at a vertex
    exact = max(_sigma(ws[2] @ torch.diag(torch.tensor(d2, dtype=torch.float64)) @ ws[1]
                       @ torch.diag(torch.tensor(d1, dtype=torch.float64)) @ ws[0])
                for d1 in itertools.product([0.0, 1.0], repeat=4) for d2 in itertools.product([0.0, 1.0], repeat=4))
    product = _sigma(ws[0]) * _sigma(ws[1]) * _sigma(ws[2])
    assert exact <= value <= product * (1 + 1e-9)


def test_slopes_above_one_scale_the_bound():
    w1, w2 = torch.eye(3, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)
    value, _ = chain_bound([w1, w2], [3.0])
    assert 6.0 <= value <= 6.0 * (1 + 2e-3)


def test_split_products_fill_missing_products():
    filled = split_products([[2.0, None], [None, 3.0]])
    assert filled[0][1] >= 6.0 and averaged_bound(filled, [1.0]) >= 6.0


CONVS = [  # (C_out, C_in, k, stride, pad, groups)
    [(4, 2, 3, 1, 1, 1), (3, 4, 3, 1, 1, 1)],
    [(4, 2, 3, 2, 1, 1), (4, 4, 3, 1, 1, 2), (2, 4, 1, 1, 0, 1)],
    [(3, 2, 2, 1, 0, 1), (3, 3, 3, 2, 2, 1)],
]


def _layers(spec, size, seed):
    gen = torch.Generator().manual_seed(seed)
    layers, weights = [], []
    for c_out, c_in, k, s, p, g in spec:
        w = torch.randn(c_out, c_in // g, k, k, generator=gen, dtype=torch.float64)
        weights.append((w, s, p, g))
        dense = torch.zeros(c_out, c_in, k, k, dtype=torch.float64)
        for i in range(g):
            dense[i * c_out // g:(i + 1) * c_out // g, i * c_in // g:(i + 1) * c_in // g] = w[i * c_out // g:
                                                                                              (i + 1) * c_out // g]
        layers.append(ConvLayer(dense, (size, size), (s, s), (1, 1), (p, p), (p, p)))
        size = (size + 2 * p - k) // s + 1
    return layers, weights


@pytest.mark.parametrize("spec", CONVS)
def test_conv_chain_is_above_the_real_zero_padded_jacobians(spec):
    size, c0 = 5, spec[0][1]
    layers, weights = _layers(spec, size, seed=len(spec))
    value, _ = chain_bound(layers, [1.0] * (len(layers) - 1))
    singles = conv_products(layers)
    gen = torch.Generator().manual_seed(7)
    eye = torch.eye(c0 * size * size, dtype=torch.float64).reshape(-1, c0, size, size)
    masks = None
    worst = 0.0
    for trial in range(60):
        x = eye
        for index, (w, s, p, g) in enumerate(weights):
            x = F.conv2d(x, w, stride=s, padding=p, groups=g)
            if index < len(weights) - 1:
                masks = torch.rand(x.shape[1:], generator=gen, dtype=torch.float64)
                x = x * (masks.round() if trial % 2 else masks)
        worst = max(worst, _sigma(x.reshape(x.shape[0], -1)))
    assert worst <= value
    product = 1.0
    for i in range(len(layers)):
        product *= singles[i][i]
    assert value <= product * (1 + 1e-9)


def test_circular_single_layer_norm_is_above_the_zero_padded_one():
    layers, weights = _layers([(3, 2, 3, 2, 1, 1)], 6, seed=3)
    (w, s, p, g), = weights
    eye = torch.eye(2 * 36, dtype=torch.float64).reshape(-1, 2, 6, 6)
    exact = _sigma(F.conv2d(eye, w, stride=s, padding=p).reshape(72, -1))
    assert exact <= conv_products(layers)[0][0] <= exact * 1.5


def test_network_bound_uses_the_chain_on_a_small_cnn():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, stride=2),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 16, 3))
    with torch.no_grad():
        model[3].running_var.uniform_(0.5, 2.0)
        model[3].running_mean.normal_()
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.randn(1, 1, 8, 8), buffer, dynamo=False, opset_version=13,
                      do_constant_folding=False)
    graph = certify.to_torch(certify.load_onnx(buffer.getvalue()))
    analysis = network_bound(graph, (1, 8, 8))
    averaged = [c for c in analysis.chains if c.method == "averaged operators"]
    assert averaged and all(c.upper is not None for c in averaged)
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    assert upper <= product * (1 + 1e-12)
    xs = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(jacobian_norms(graph, xs).max()) <= upper


@pytest.mark.parametrize("spec", CONVS)
def test_lower_estimate_is_below_the_certified_chain_and_screens_it(spec):
    # the estimate from below never exceeds the certified value, so a target at or below it skips nothing useful
    from certify.lipschitz.averaged import conv_lower_products

    layers, _ = _layers(spec, 5, seed=len(spec))
    betas = [1.0] * (len(layers) - 1)
    value, _ = chain_bound(layers, betas)
    lower = averaged_bound(split_products(conv_lower_products(layers)), betas)
    assert 0.5 * value <= lower <= value
    assert chain_bound(layers, betas, target=lower)[0] is None  # cannot go below the target: not formed
    assert chain_bound(layers, betas, target=value * 1.01)[0] == value  # may beat it: the same certified value


def test_known_dense_norms_are_taken_as_they_are():
    torch.manual_seed(2)
    ws = [torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    computed, _ = chain_bound(ws, [1.0])
    shared, _ = chain_bound(ws, [1.0], diagonal=[_sigma(ws[0]) * (1 + 1e-12), None])
    assert computed * (1 - 1e-3) <= shared <= computed * (1 + 1e-3)


@pytest.mark.parametrize("kernel, grid", [((5, 4, 3, 3), (7, 6)), ((5, 4, 3), (9,)), ((3, 2, 2, 3, 2), (5, 6, 4)),
                                          ((3, 2, 16, 16), (20, 18))])
def test_fourier_blocks_match_the_direct_sum(kernel, grid):
    # both routes of blocks_at (one real product over all taps; axis by axis for many taps) against the definition
    import math

    from certify.lipschitz.lifting import blocks_at

    k = torch.randn(kernel, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    freqs = torch.cartesian_prod(*[torch.arange(g) for g in grid]).reshape(-1, len(grid))
    expected = torch.zeros(freqs.shape[0], *kernel[:2], dtype=torch.complex128)
    for tap in torch.cartesian_prod(*[torch.arange(t) for t in kernel[2:]]).reshape(-1, len(grid)).tolist():
        angle = sum(freqs[:, a].double() * tap[a] / grid[a] for a in range(len(grid))) * 2 * math.pi
        expected += torch.polar(torch.ones_like(angle), -angle).view(-1, 1, 1) * k[(slice(None), slice(None), *tap)]
    assert float((blocks_at(k, grid, freqs) - expected).abs().max()) < 1e-12


def test_chain_budget_leaves_the_chains_to_the_product():
    # an explicit time cap: chains past it are skipped and counted; the bound stays sound, at most the product
    from certify.lipschitz.network import analyse

    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 3))
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.randn(1, 1, 6, 6), buffer, dynamo=False, opset_version=13)
    graph = certify.to_torch(certify.load_onnx(buffer.getvalue()))
    tight = analyse(graph, (1, 6, 6))
    capped = analyse(graph, (1, 6, 6), chain_budget_s=0.0)
    assert tight.chains and not capped.chains and capped.chains_skipped >= 1 and tight.chains_skipped == 0
    out = tight.output_name
    assert tight.composed[out] <= capped.composed[out] <= capped.product[out] * (1 + 1e-12)
    xs = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    assert float(jacobian_norms(graph, xs).max()) <= tight.composed[out]


@pytest.mark.parametrize("spec", CONVS)
def test_path_screen_is_below_every_certified_product_and_the_chain(spec):
    # one input's path gives lower bounds of every contiguous product: never above their certified values, so the
    # screen built on them never skips a chain that could beat its target
    from certify.lipschitz.averaged import _full_product, path_lower_products, power_lower_products

    layers, _ = _layers(spec, 5, seed=len(spec) + 3)
    betas = [1.0] * (len(layers) - 1)
    _, vector = _full_product(layers)
    path = path_lower_products(layers, vector, [None] * len(layers))  # no own lower bounds
    power = power_lower_products(layers, path)
    certified = split_products(conv_products(layers))
    for i, j in itertools.combinations_with_replacement(range(len(layers)), 2):
        assert path[i][j] <= power[i][j] <= certified[i][j]
    value, _ = chain_bound(layers, betas)
    assert averaged_bound(path, betas) <= averaged_bound(power, betas) <= value


def test_path_screen_is_tight_on_two_dense_layers():
    # two layers: the averaged bound is (||W2 W1|| + ||W2|| ||W1||) / 2; with the layers' own norms and a power
    # vector of the product, the screen is within a few percent of it
    from certify.lipschitz.averaged import _full_product, path_lower_products

    gen = torch.Generator().manual_seed(5)
    mats = [torch.randn(30, 20, generator=gen, dtype=torch.float64), torch.randn(10, 30, generator=gen,
                                                                                  dtype=torch.float64)]
    _, vector = _full_product(mats)
    screen = averaged_bound(path_lower_products(mats, vector, [_sigma(m) for m in mats]), [1.0])
    value, _ = chain_bound(mats, [1.0])
    assert 0.97 * value <= screen <= value
