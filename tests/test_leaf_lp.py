"""Leaf linear programs against exact answers: the safe dual bound is never above the LP's true minimum (for the
solver's multipliers and for arbitrary ones), equals it to rounding, proves empty polytopes empty; on a
one-hidden-layer net with every neuron split, each pattern's bound matches the pattern's own LP built from the
weights, and the smallest over all patterns is the network's exact minimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from certify.convert import to_torch
from certify.local.bab import split_steps
from certify.local.bounds import Propagation, float64_graph
from certify.local.leaf_lp import LeafProgram, programs, safe_minimum
from certify.local.region import Region
from tests.test_bab import mlp, pattern_minimum


@pytest.mark.parametrize("seed", range(6))
def test_the_safe_bound_is_below_the_true_minimum_and_tight(seed):
    rng = np.random.default_rng(seed)
    n, m = 4, 6
    lo, hi = -rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
    a, G = rng.standard_normal(n), rng.standard_normal((m, n))
    r = G @ rng.uniform(lo, hi) + rng.uniform(0.1, 1, m)  # a feasible interior point exists
    res = linprog(a, A_ub=G, b_ub=r, bounds=list(zip(lo, hi)), method="highs")
    assert res.status == 0
    y = -res.ineqlin.marginals
    safe = safe_minimum(a, G, r, y, lo, hi, 0.25)
    assert safe <= res.fun + 0.25 and safe == pytest.approx(res.fun + 0.25, abs=1e-9)
    for _ in range(20):  # weak duality: any multipliers give a valid (weaker) bound
        assert safe_minimum(a, G, r, rng.exponential(size=m), lo, hi) <= res.fun + 1e-12
    bound, x = LeafProgram(lo, hi, a[None], np.zeros(1), G, r).row(0)
    assert bound <= res.fun and np.all(G @ x <= r + 1e-9) and np.all((lo <= x) & (x <= hi))


def test_an_empty_polytope_is_proved_empty_and_a_nearly_empty_one_is_not():
    lo, hi = -np.ones(2), np.ones(2)
    G = np.array([[1.0, 0.0], [-1.0, 0.0]])
    empty = LeafProgram(lo, hi, np.array([[1.0, 1.0]]), np.zeros(1), G, np.array([-0.5, -0.5]))  # x0 <= -.5, >= .5
    assert empty.row(0)[0] == np.inf
    touching = LeafProgram(lo, hi, np.array([[1.0, 1.0]]), np.zeros(1), G, np.array([0.0, 0.0]))  # x0 = 0
    bound, x = touching.row(0)
    assert bound <= -1 and bound == pytest.approx(-1) and x[0] == pytest.approx(0)


@pytest.mark.parametrize("seed", [7, 8])
def test_every_activation_pattern_gets_its_exact_minimum(seed):
    model, params = mlp(3, (5,), seed)
    g64 = float64_graph(to_torch(model))
    (w1, b1, w2, b2) = [params[k] for k in sorted(params, key=lambda n: int(n[1:]))]
    lower, upper = -np.ones(3), np.ones(3)
    names = [name for _, name in split_steps(g64)]
    best = np.inf
    for pattern in itertools.product((-1, 1), repeat=5):
        sign = torch.tensor([pattern], dtype=torch.int8)
        region = Region.box(torch.as_tensor(lower[None]), torch.as_tensor(upper[None]))
        prop = Propagation(g64, region, "crown", splits={names[0]: sign})
        on = np.array(pattern) > 0
        exact = linprog((w2[0] * on) @ w1, A_ub=-np.array(pattern)[:, None] * w1, b_ub=np.array(pattern) * b1,
                        bounds=list(zip(lower, upper)), method="highs")
        if bool(prop.infeasible()[0]):
            assert exact.status == 2  # the bounds call it empty only when it is
            continue
        bound, _ = programs(prop, names, np.array([0]), np.ones((1, 1)))[0].row(0)
        if exact.status == 2:  # empty: any bound is valid (the relaxed polytope may just touch)
            continue
        value = exact.fun + (w2[0] * on) @ b1 + b2[0]
        assert bound <= value and bound == pytest.approx(value, abs=1e-6)
        best = min(best, bound)
    exact_min = pattern_minimum(params, lower, upper)
    assert best <= exact_min and best == pytest.approx(exact_min, abs=1e-6)
