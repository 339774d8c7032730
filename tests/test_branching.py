"""Branching of the Relu split search, judged on small nets against a dense grid: the children bounds that filtered
smart branching compares are sound on every child, its choice has the best worse
child among the candidates, the split search with it proves below the grid minimum and never above it, warm starts
come from the best iterate, and boxes shared by every sample give the same bounds as one box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from certify.convert import to_torch
from certify.local.bab import ReluSearch
from certify.local.bounds import Propagation, float64_graph
from certify.local.branching import children_lower, choose, intercept_scores
from certify.local.region import Region
from tests.test_bab import mlp, search

AXIS = np.linspace(-1, 1, 201)
GRID = np.stack(np.meshgrid(AXIS, AXIS), -1).reshape(-1, 2)


def setup(seed: int):
    """A 2-16-16-1 net, its root propagation over [-1, 1]^2 with optimised slopes, and the grid's tensors."""
    model, _ = mlp(2, (16, 16), seed)
    g64 = float64_graph(to_torch(model))
    steps = ReluSearch(g64, (2,)).steps
    box = Region.box(-torch.ones((1, 2), dtype=torch.float64), torch.ones((1, 2), dtype=torch.float64))
    prop = Propagation(g64, box, "crown")
    c = torch.ones((1, 1, 1), dtype=torch.float64)
    kept: dict = {}
    low = prop.lower(c, alpha_steps=10, keep=kept)
    with torch.no_grad():
        y, env = g64.run(torch.as_tensor(GRID), keep=True)
    return g64, steps, prop, c, kept, float(low), y[0].flatten().numpy(), env


def flat_values(env, steps) -> np.ndarray:
    """Every split tensor's values on the grid, flattened and concatenated (the branching's neuron order)."""
    return np.concatenate([env[name].reshape(len(GRID), -1).numpy() for _, name in steps], axis=1)


@pytest.mark.parametrize("seed", [5, 6])
def test_children_bounds_are_sound_on_each_child(seed):
    g64, steps, prop, c, kept, parent, values, env = setup(seed)
    pre = flat_values(env, steps)
    unstable = np.flatnonzero(torch.cat([((prop.bounds[n].lo < 0) & (prop.bounds[n].hi > 0)).flatten(1)
                                         for _, n in steps], 1)[0].numpy())
    assert unstable.size >= 4
    flat = torch.as_tensor(np.concatenate([unstable, unstable]))
    sign = torch.cat([torch.ones(unstable.size), -torch.ones(unstable.size)])
    parent_index = torch.zeros(len(flat), dtype=torch.long)
    params = prop._parameters(prop.output_name, c, kept)
    low = children_lower(prop, [n for _, n in steps], parent_index, flat, sign, c, *params)[0].numpy()
    for k, (j, s) in enumerate(zip(flat.numpy(), sign.numpy())):
        inside = s * pre[:, j] >= 0
        assert not inside.any() or low[k] <= values[inside].min() + 1e-9  # sound on the child


@pytest.mark.parametrize("seed", [5, 6])
def test_filtered_choice_has_the_best_worse_child_among_the_candidates(seed):
    g64, steps, prop, c, kept, parent, values, env = setup(seed)
    record: dict = {}
    with torch.no_grad():
        prop.backward(prop.output_name, c, kept["theta"], kept.get("beta"), record=record)
    weight, open_ = np.ones((1, 1)), np.array([0])
    params = prop._parameters(prop.output_name, c, kept)
    names = [n for _, n in steps]
    worst = lambda low: low.detach().T.numpy()[:, 0]  # noqa: E731

    def worse_child(neuron: int) -> float:
        low = children_lower(prop, names, torch.zeros(2, dtype=torch.long), torch.tensor([neuron, neuron]),
                             torch.tensor([1.0, -1.0]), c, *params)
        return float(low.min())

    (cheap, *_), has = choose(prop, steps, record, weight, open_, c, params, worst, top_k=1)
    (filtered, *_), _ = choose(prop, steps, record, weight, open_, c, params, worst, top_k=6)
    assert bool(has[0])
    top = intercept_scores(prop, steps, record, torch.as_tensor(weight), open_)[0].topk(6).indices
    assert int(cheap[0]) == int(top[0])
    assert int(filtered[0]) in top.tolist()
    assert worse_child(int(filtered[0])) >= max(worse_child(int(j)) for j in top) - 1e-12
    assert worse_child(int(filtered[0])) >= worse_child(int(cheap[0]))


@pytest.mark.parametrize("top_k", [1, 4])
def test_search_with_either_branching_proves_below_the_grid_minimum_and_never_above(top_k):
    model, _ = mlp(2, (10, 10), 1)
    g64 = float64_graph(to_torch(model))
    with torch.no_grad():
        values = g64(torch.as_tensor(GRID)).flatten().numpy()
    square = values.reshape(len(AXIS), len(AXIS))
    slope = np.abs(np.diff(square, axis=0)).max() + np.abs(np.diff(square, axis=1)).max()

    box = (g64, -np.ones(2), np.ones(2))
    assert search(*box, values.min() - max(0.05, 2 * slope), top_k=top_k).result == "holds"
    assert search(*box, values.min() + 1e-3, seconds=4, top_k=top_k).result != "holds"


def test_kept_parameters_are_the_best_iterates():
    """The warm start left in ``keep`` reproduces the best bound, not Adam's last iterate."""
    g64, steps, prop, c, kept, parent, values, env = setup(7)
    fresh: dict = {}
    best = prop._optimised(prop.output_name, c, 12, 2.0, keep=fresh)  # a large step size: iterates jump around
    with torch.no_grad():
        again = prop.linear_lower(prop.output_name, c, fresh["theta"], fresh["beta"]) - prop._spec_rounding(c)
    assert torch.allclose(again, best, atol=1e-12)


def test_identical_boxes_share_magnitudes_and_give_the_bounds_of_one_box():
    model, _ = mlp(2, (8, 8), 3)
    g64 = float64_graph(to_torch(model))
    lo, hi = torch.tensor([[-0.5, 0.2]], dtype=torch.float64), torch.tensor([[0.4, 0.9]], dtype=torch.float64)
    one = Propagation(g64, Region.box(lo, hi), "crown")
    many = Propagation(g64, Region.box(lo.expand(3, 2), hi.expand(3, 2)), "crown")
    c = torch.ones((1, 3, 1), dtype=torch.float64)
    assert torch.allclose(many.lower(c), one.lower(c[:, :1]).expand(1, 3))
    for name, m in one.magnitude.items():
        assert torch.equal(many.magnitude[name], m.expand_as(many.magnitude[name]))
