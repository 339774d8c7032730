"""The empirical lower bound (largest Jacobian norm, then secant ascent from many starts): never above the exact
constant of small networks whose constant is known, close to it, above the plain dataset maximum, and never above the
certified upper bound."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from torch import nn

from certify.lipschitz import network_bound
from certify.lipschitz.empirical import Clock, _starts_that_fit, jacobian_norms, lower_bound, secant_ascent
from tests.test_lipschitz_network import convert, mlp


def test_affine_network_reaches_the_exact_norm():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(12, 9), nn.Linear(9, 70))  # 70 outputs: power iteration, not a full Jacobian
    graph = convert(model, (12,))
    weight = (model[1].weight @ model[0].weight).detach().double()
    exact = float(torch.linalg.svdvals(weight)[0])
    result = lower_bound(graph, torch.rand(6, 12), ascent_steps=40)
    assert exact * (1 - 1e-3) <= result["lower"] <= exact * (1 + 1e-5)


def _exact_relu_constant(model: nn.Sequential) -> tuple[float, float]:
    """(largest ||W2 D W1|| over the activation patterns met on a dense grid of the 2-D input plane, the same over
    every pattern): the first is achieved by some input region, the second bounds the constant from above."""
    w1, b1, w2 = (t.detach().double() for t in (model[0].weight, model[0].bias, model[2].weight))
    axis = torch.linspace(-40, 40, 801, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    patterns = torch.unique((grid @ w1.T + b1 > 0).to(torch.float64), dim=0)
    met = max(float(torch.linalg.svdvals(w2 @ torch.diag(p) @ w1)[0]) for p in patterns)
    every = max(float(torch.linalg.svdvals(w2 @ torch.diag(torch.tensor(p, dtype=torch.float64)) @ w1)[0])
                for p in itertools.product([0.0, 1.0], repeat=w1.shape[0]))
    return met, every


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_network_close_to_its_exact_constant(seed):
    torch.manual_seed(seed)
    model = mlp([2, 7, 3])
    graph = convert(model, (2,))
    met, every = _exact_relu_constant(model)
    xs = torch.rand(8, 2)
    data = float(jacobian_norms(graph, xs).max())
    result = lower_bound(graph, xs)
    assert result["lower"] <= every * (1 + 1e-5)
    assert result["lower"] >= max(data, 0.97 * met)


def test_ascent_beats_the_dataset_and_stays_below_the_certified_bound():
    torch.manual_seed(4)
    model = mlp([16, 48, 48, 48, 4])
    graph = convert(model, (16,))
    xs = torch.rand(8, 16)
    data = float(jacobian_norms(graph, xs).max())
    found = secant_ascent(graph, xs, steps=60)
    analysis = network_bound(graph, (16,))
    assert data * 1.05 < found <= analysis.composed[analysis.output_name]


def test_cnn_lower_bound_and_budget():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 80))
    graph = convert(model, (1, 8, 8))
    xs = torch.rand(4, 1, 8, 8)
    analysis = network_bound(graph, (1, 8, 8))
    result = lower_bound(graph, xs, budget_s=0.0)  # the screening runs, the ascent stops at once
    assert result["found_by"] in ("dataset", "secant ascent")
    assert result["budget_s"] == 0.0 and 0.0 <= result["seconds"] < 30.0  # reported apart from the bound's time
    full = lower_bound(graph, xs)
    assert result["lower"] <= full["lower"] <= analysis.composed[analysis.output_name]
    assert np.isfinite(full["lower"]) and full["ascent_starts"] == 4 + 8


def test_screening_and_ascent_keep_the_deadline():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 70))  # 70 outputs: power iteration
    graph = convert(model, (12,))
    xs = torch.rand(4, 12)
    norms = jacobian_norms(graph, xs, deadline=time.monotonic() - 1.0)  # past: one step at the first point only
    assert np.isfinite(norms[0]) and norms[0] > 0 and np.isnan(norms[1:]).all()
    assert Clock(None).allows_another() and Clock(time.monotonic() + 60).allows_another()
    assert not Clock(time.monotonic() - 1.0).allows_another()
    # a slow network (a second per forward pass) ascends from one start, a fast one from all of them
    assert _starts_that_fit(10.0, 1.0) == 1 and _starts_that_fit(10.0, 1e-3) >= 16
    # a budget already spent: the ascent evaluates its starts once and stops, still an achieved value
    value = secant_ascent(graph, xs, steps=50, deadline=time.monotonic() - 1.0)
    analysis = network_bound(graph, (12,))
    assert 0 < value <= analysis.composed[analysis.output_name]
