"""Chains of small convolutions (materialised) and dense layers bounded by ECLipsE-Fast: never below the exact
constant of a 2-D-input CNN (its linear regions enumerated on a dense grid), never above the product, and above the
empirical lower bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify.lipschitz import network_bound
from certify.lipschitz.empirical import lower_bound
from tests.test_lipschitz_network import convert


def _tiny_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, (1, 1)), nn.ReLU(), nn.Conv2d(3, 4, (1, 2)), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def _exact_constant(model: nn.Sequential) -> float:
    """max ||J(x)|| over the linear regions met on a dense grid of the 2-D input plane (J is constant on each)."""
    axis = torch.linspace(-30, 30, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis).reshape(-1, 1, 1, 2)
    double = model.double()
    with torch.no_grad():
        hidden = double[1](double[0](grid))
        patterns = torch.cat([(hidden > 0).flatten(1), (double[2](hidden) > 0).flatten(1)], dim=1)
    _, region = torch.unique(patterns, dim=0, return_inverse=True)
    points = grid[torch.stack([(region == k).nonzero()[0, 0] for k in range(int(region.max()) + 1)])]
    jac = torch.stack([torch.autograd.functional.jacobian(lambda z: double(z.unsqueeze(0)).flatten(), p).reshape(3, 2)
                       for p in points])
    model.float()
    return float(torch.linalg.matrix_norm(jac, ord=2).max())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_materialised_chain_is_sound_and_below_the_product(seed):
    model = _tiny_cnn(seed)
    exact = _exact_constant(model)
    graph = convert(model, (1, 1, 2))
    analysis = network_bound(graph, (1, 1, 2))
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    assert exact <= upper <= product * (1 + 1e-12)
    assert any(c.method.startswith("ECLipsE-Fast (materialised") for c in analysis.chains)
    found = lower_bound(graph, torch.rand(6, 1, 1, 2))["lower"]
    assert 0.85 * exact <= found <= exact * (1 + 1e-5)  # an estimate from below: within 15% here


def test_materialised_chain_beats_the_averaged_bound_on_a_small_cnn():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, stride=2),
                          nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10))
    graph = convert(model, (1, 8, 8))
    analysis = network_bound(graph, (1, 8, 8))
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    found = lower_bound(graph, torch.rand(8, 1, 8, 8))["lower"]
    assert found <= upper < 0.8 * product


def _layers(seed: int, channels, spatial, stride, kernel=3):
    from certify.lipschitz.lifting import ConvLayer

    gen = torch.Generator().manual_seed(seed)
    pad = kernel // 2
    out, size = [], spatial
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        s = stride if i == 0 else 1
        weight = torch.randn(c_out, c_in, kernel, kernel, generator=gen, dtype=torch.float64)
        out.append(ConvLayer(weight, (size, size), (s, s), (1, 1), (pad, pad), (pad, pad)))
        size = (size + 2 * pad - kernel) // s + 1
    return out


def test_fourier_eclipse_on_pointwise_convolutions_is_dense_eclipse():
    # 1x1 convolutions: every Fourier block is the channel matrix, so the recursion is ECLipsE-Fast on those
    from certify.lipschitz.eclipse import eclipse_fast
    from certify.lipschitz.fourier_eclipse import conv_eclipse

    layers = _layers(0, [4, 6, 5, 3], 5, 1, kernel=1)
    dense, _ = eclipse_fast([layer.weight[:, :, 0, 0] for layer in layers])
    assert dense <= conv_eclipse(layers, [1.0, 1.0]) <= dense * (1 + 3e-6)


@pytest.mark.parametrize("seed, stride", [(1, 1), (2, 2)])
def test_fourier_eclipse_is_sound_and_below_the_averaged_bound(seed, stride):
    # the run as a network (zero padding, ReLU between layers): its bound is above every secant found
    from certify.lipschitz.averaged import averaged_bound, conv_products, split_products
    from certify.lipschitz.fourier_eclipse import conv_eclipse

    layers = _layers(seed, [2, 5, 5, 3], 8, stride)
    value = conv_eclipse(layers, [1.0, 1.0])
    norms = split_products(conv_products(layers))
    assert value < averaged_bound(norms, [1.0, 1.0]) < norms[0][0] * norms[1][1] * norms[2][2]
    model = nn.Sequential(*[m for layer in layers for m in (_torch_conv(layer), nn.ReLU())][:-1]).float()
    graph = convert(model, (2, 8, 8))
    found = lower_bound(graph, torch.rand(8, 2, 8, 8))["lower"]
    assert found <= value
    analysis = network_bound(graph, (2, 8, 8))
    assert found <= analysis.composed[analysis.output_name] <= analysis.product[analysis.output_name]


def _torch_conv(layer) -> nn.Conv2d:
    conv = nn.Conv2d(layer.weight.shape[1], layer.weight.shape[0], layer.weight.shape[2], stride=layer.stride,
                     padding=layer.pads_begin, bias=False)
    conv.weight.data = layer.weight.float()
    return conv


def test_large_maps_take_the_fourier_route_in_the_network(monkeypatch):
    from certify.lipschitz import averaged

    monkeypatch.setattr(averaged, "DENSE_MAX_ENTRIES", 0)  # as if the maps were too large to materialise
    layers = _layers(3, [2, 6, 6, 4], 8, 1)
    model = nn.Sequential(*[m for layer in layers for m in (_torch_conv(layer), nn.ReLU())][:-1]).float()
    graph = convert(model, (2, 8, 8))
    analysis = network_bound(graph, (2, 8, 8))
    methods = {c.method for c in analysis.chains}
    assert "ECLipsE-Fast (Fourier-domain convolution runs)" in methods
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    found = lower_bound(graph, torch.rand(8, 2, 8, 8))["lower"]
    assert found <= upper < 0.9 * product


def test_fourier_eclipse_keeps_or_recomputes_the_same_recursion(monkeypatch):
    # Gram blocks kept between passes, or every earlier factor recomputed per chunk: the same bound
    from certify.lipschitz import fourier_eclipse

    layers = _layers(3, [3, 6, 6, 4], 7, 1)
    kept = fourier_eclipse.conv_eclipse(layers, [1.0, 1.0])
    monkeypatch.setattr(fourier_eclipse, "_KEPT_BYTES", 0)
    monkeypatch.setattr(fourier_eclipse, "_BLOCK_BYTES", 16 * 36 * 4 * 5)  # five frequencies per chunk
    recomputed = fourier_eclipse.conv_eclipse(layers, [1.0, 1.0])
    assert abs(kept - recomputed) <= 1e-12 * kept


def test_pair_norms_from_the_gram_matrix_are_above_the_direct_differences():
    import numpy as np

    from certify.lipschitz import eclipse

    rows = torch.randn(40, 300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows[1] = rows[0] + 1e-9 * rows[2]  # nearly equal rows: the Gram form cancels, its rounding term must cover it
    direct = np.linalg.norm(rows.numpy()[:, None, :] - rows.numpy()[None, :, :], axis=2)
    bound = eclipse.pair_norms(rows)
    assert (bound >= direct).all() and (np.diag(bound) == 0).all()
    far = ~np.eye(40, dtype=bool)
    far[0, 1] = far[1, 0] = False
    assert (bound[far] <= direct[far] * (1 + 1e-6)).all()
