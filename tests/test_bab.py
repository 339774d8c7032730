"""Branch and bound over Relu splits against exact answers: on 2-D inputs a dense grid, on one-hidden-layer nets
every activation pattern's linear program. It never proves a property a point breaks, proves true properties that
plain CROWN cannot, finds the counterexamples, respects its time budget, and leaves non-Relu nets to the other
methods."""

from __future__ import annotations

import itertools
import time

import numpy as np
import onnx
import pytest
import torch
from scipy.optimize import linprog

from certify.convert import to_torch
from certify.decide import engine, load_decider
from certify.local.bab import MAX_SPLIT_DEPTH, Domains, ReluSearch, Spec, split_depth
from certify.local.bounds import BoundTimeout, Propagation, float64_graph
from certify.local.region import Region
from certify.vnnlib import parse_vnnlib
from tests.test_float_error import Model


def mlp(inputs: int, widths, seed: int, act: str = "Relu"):
    m = Model((1, inputs), seed, scale=1.0)
    h, fan_in = "x", inputs
    weights = []
    for width in widths:
        w, b = m.weight(width, fan_in), m.weight(width)
        weights.append((w, b))
        h = m.add(act, [m.add("Gemm", [h, w, b], transB=1)])
        fan_in = width
    out = m.add("Gemm", [h, m.weight(1, fan_in), m.weight(1)], transB=1)
    model = m.model(out, ["N", 1])
    return model, {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def root_bound(g64, lower, upper) -> float:
    region = Region.box(torch.as_tensor(lower[None]), torch.as_tensor(upper[None]))
    return float(Propagation(g64, region, "crown").lower(torch.ones((1, 1, 1), dtype=torch.float64), alpha_steps=20))


def search(g64, lower, upper, threshold, seconds=20.0, refine=False, top_k=1):
    """Prove ``y > threshold`` over the box; the candidate check is the exact (float64) network."""

    def candidate(xs):
        with torch.no_grad():
            y = g64(torch.as_tensor(xs)).flatten()
        bad = np.flatnonzero(y.numpy() <= threshold)
        return xs[bad[0]] if bad.size else None

    spec = Spec(np.ones((1, 1)), np.array([threshold]), [np.array([0])], np.zeros(1))
    search = ReluSearch(g64, lower.shape, refine=refine, top_k=top_k)
    return search.run(lower, upper, spec, 0.0, time.monotonic() + seconds, candidate)


@pytest.mark.parametrize("seed, refine", [(1, False), (2, False), (1, True)])
def test_on_a_2d_grid_bab_proves_below_the_minimum_and_never_above_it(seed, refine):
    model, _ = mlp(2, (10, 10), seed)
    g64 = float64_graph(to_torch(model))
    lower, upper = -np.ones(2), np.ones(2)
    axis = np.linspace(-1, 1, 401)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    with torch.no_grad():
        values = g64(torch.as_tensor(grid)).flatten().numpy()
    grid_min = values.min()
    square = values.reshape(401, 401)
    slope = np.abs(np.diff(square, axis=0)).max() + np.abs(np.diff(square, axis=1)).max()
    below = grid_min - max(0.05, 2 * slope)  # the true minimum is within one grid step of the grid's
    assert root_bound(g64, lower, upper) < below  # plain (alpha-)CROWN cannot prove it
    assert search(g64, lower, upper, below, refine=refine).result == "holds"
    above = search(g64, lower, upper, grid_min + 1e-3, seconds=4, refine=refine)  # a grid point breaks it
    assert above.result != "holds"  # found, stuck or out of time (a leaf's vertices need not break it)


def pattern_minimum(p: dict, lower, upper) -> float:
    """The exact minimum of a one-hidden-layer Relu net: every activation pattern's linear program."""
    (w1, b1, w2, b2) = [p[k] for k in sorted(p, key=lambda n: int(n[1:]))]
    best = np.inf
    for pattern in itertools.product((0, 1), repeat=len(b1)):
        on = np.array(pattern, dtype=bool)
        sign = np.where(on, -1.0, 1.0)  # active: -(w x + b) <= 0; inactive: w x + b <= 0
        res = linprog((w2[0] * on) @ w1, A_ub=sign[:, None] * w1, b_ub=-sign * b1, bounds=list(zip(lower, upper)))
        if res.status == 0:
            best = min(best, res.fun + (w2[0] * on) @ b1 + b2[0])
    return best


def vnnlib_below(n: int, threshold: float) -> str:
    declare = "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + "(declare-const Y_0 Real)\n"
    box = "".join(f"(assert (>= X_{i} -1))(assert (<= X_{i} 1))\n" for i in range(n))
    return declare + box + f"(assert (<= Y_0 {float(threshold)!r}))\n"


@pytest.mark.parametrize("seed", [3, 4])
def test_decider_on_20_inputs_matches_the_exact_minimum(tmp_path, seed):
    model, params = mlp(20, (8,), seed)
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    lower, upper = -np.ones(20), np.ones(20)
    exact = pattern_minimum(params, lower, upper)
    g64 = float64_graph(to_torch(model))
    below = exact - 0.1 * (exact - root_bound(g64, lower, upper))  # plain CROWN does not reach it
    prop = parse_vnnlib(vnnlib_below(20, below))
    verdict = load_decider(str(path), prop).decide(prop, timeout=30)
    assert (verdict.result, verdict.method) == ("holds", "bab")
    prop = parse_vnnlib(vnnlib_below(20, exact + 0.05))  # broken only near the minimiser: never "holds"
    assert load_decider(str(path), prop).decide(prop, timeout=5).result != "holds"
    with torch.no_grad():
        centre = float(g64(torch.zeros((1, 20), dtype=torch.float64)))
    above = exact + 0.3 * (centre - exact)
    prop = parse_vnnlib(vnnlib_below(20, above))
    verdict = load_decider(str(path), prop).decide(prop, timeout=30)
    assert verdict.result == "violated"
    assert verdict.counterexample.y[0] <= above


def test_split_signs_make_the_relaxation_exact_and_empty_subdomains_are_flagged():
    model, _ = mlp(2, (4,), 5)
    g64 = float64_graph(to_torch(model))
    region = Region.box(-torch.ones((3, 2), dtype=torch.float64), torch.ones((3, 2), dtype=torch.float64))
    name = ReluSearch(g64, (2,)).steps[0][1]
    root = Propagation(g64, region, "crown")
    box = root.bounds[name]
    splits = torch.zeros_like(box.lo)
    splits[0] = 1.0
    splits[1] = -1.0
    split = Propagation(g64, region, "crown", splits={name: splits})
    assert torch.all(split.bounds[name].lo[0] >= 0) and torch.all(split.bounds[name].hi[1] <= 0)
    stable_on = box.lo[2] >= 0
    splits[2] = torch.where(stable_on, -1.0, 0.0)  # a stably active neuron forced off: nothing is left
    assert bool(Propagation(g64, region, "crown", splits={name: splits}).infeasible()[2]) == bool(stable_on.any())


def test_a_passed_deadline_interrupts_the_propagation():
    model, _ = mlp(2, (8, 8), 6)
    g64 = float64_graph(to_torch(model))
    region = Region.box(-torch.ones((1, 2), dtype=torch.float64), torch.ones((1, 2), dtype=torch.float64))
    with pytest.raises(BoundTimeout):
        Propagation(g64, region, "crown", deadline=time.monotonic() - 1)


def test_a_hard_property_returns_within_its_budget(tmp_path):
    model, _ = mlp(40, (64, 64, 64), 7)
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    g64 = float64_graph(to_torch(model))
    with torch.no_grad():
        centre = float(g64(torch.zeros((1, 40), dtype=torch.float64)))
    root = root_bound(g64, -np.ones(40), np.ones(40))
    prop = parse_vnnlib(vnnlib_below(40, (root + centre) / 2))  # between the bound and a reachable value
    decider = load_decider(str(path), prop)
    start = time.monotonic()
    decider.decide(prop, timeout=3)
    assert time.monotonic() - start < 6


def test_nets_without_relu_have_no_split_search(tmp_path):
    model, _ = mlp(20, (8,), 8, act="Sigmoid")
    assert engine(to_torch(model), (20,)).search is None
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    prop = parse_vnnlib(vnnlib_below(20, 1e6))  # violated everywhere
    assert load_decider(str(path), prop).decide(prop, timeout=10).result == "violated"


def test_a_residual_cnn_with_pooling_goes_through_the_split_search(tmp_path):
    m = Model((1, 1, 6, 6), 9, scale=0.7)
    h = m.add("Relu", [m.add("Conv", ["x", m.weight(2, 1, 3, 3), m.weight(2)], pads=[1, 1, 1, 1])])
    r = m.add("Relu", [m.add("Add", [h, m.add("Conv", [h, m.weight(2, 2, 3, 3), m.weight(2)], pads=[1, 1, 1, 1])])])
    p = m.add("Flatten", [m.add("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2])])
    model = m.model(m.add("Gemm", [p, m.weight(1, 18), m.weight(1)], transB=1), ["N", 1])
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    g64 = float64_graph(to_torch(model))
    assert len(ReluSearch(g64, (1, 6, 6)).steps) == 2
    box = "".join(f"(assert (>= X_{i} -0.2))(assert (<= X_{i} 0.2))\n" for i in range(36))
    declare = "".join(f"(declare-const X_{i} Real)\n" for i in range(36)) + "(declare-const Y_0 Real)\n"
    with torch.no_grad():
        centre = float(g64(torch.zeros((1, 1, 6, 6), dtype=torch.float64)))
    root = root_bound(g64, -0.2 * np.ones((1, 6, 6)), 0.2 * np.ones((1, 6, 6)))
    decider = load_decider(str(path), parse_vnnlib(declare + box + "(assert (<= Y_0 0))"))
    start = time.monotonic()
    for threshold in (root - 1e-3, (root + centre) / 2, centre + 1e-3):
        prop = parse_vnnlib(declare + box + f"(assert (<= Y_0 {float(threshold)!r}))")
        verdict = decider.decide(prop, timeout=5)
        assert verdict.result != ("violated" if threshold < root else "holds" if threshold > centre else "-")
    assert time.monotonic() - start < 25


def grid_values(g64, lower, upper, points=201) -> np.ndarray:
    axis = [np.linspace(lo, hi, points) for lo, hi in zip(lower, upper)]
    grid = np.stack(np.meshgrid(*axis), -1).reshape(-1, 2)
    with torch.no_grad():
        return g64(torch.as_tensor(grid)).reshape(len(grid), -1).numpy()


def test_warm_started_bounds_stay_sound_and_start_where_the_parent_ended():
    """Any warm start (even out of range: it is clamped) gives a bound below the true minimum on each split
    subdomain; started from the root's last slopes a child is at least as tight as plain CROWN on it."""
    model, _ = mlp(2, (12, 12), 11)
    g64 = float64_graph(to_torch(model))
    name = ReluSearch(g64, (2,)).steps[0][1]
    root = Propagation(g64, Region.box(-torch.ones((1, 2), dtype=torch.float64), torch.ones((1, 2),
                                                                                               dtype=torch.float64)),
                       "crown")
    c = torch.ones((1, 2, 1), dtype=torch.float64)
    kept: dict = {}
    root.lower(c[:, :1], alpha_steps=10, keep=kept)
    neuron = int(((root.bounds[name].lo < 0) & (root.bounds[name].hi > 0)).flatten().nonzero()[0])
    splits = torch.zeros((2, *root.bounds[name].lo.shape[1:]))
    splits[0, neuron], splits[1, neuron] = 1.0, -1.0
    region = Region.box(-torch.ones((2, 2), dtype=torch.float64), torch.ones((2, 2), dtype=torch.float64))
    child = Propagation(g64, region, "crown", splits={name: splits}, prior={name: root.bounds[name]},
                        keep_prior=True)
    values = grid_values(g64, -np.ones(2), np.ones(2))[:, 0]
    with torch.no_grad():
        pre = dict(g64.run(torch.as_tensor(np.stack(np.meshgrid(*[np.linspace(-1, 1, 201)] * 2), -1).reshape(-1, 2)),
                           keep=True)[1])[name][:, neuron].numpy()
    truth = [values[pre >= 0].min(), values[pre <= 0].min()]
    plain = child.lower(c, alpha_steps=0)
    warm = {"theta": {i: t.expand(1, 2, *t.shape[2:]) for i, t in kept["theta"].items()}}
    assert bool((child.lower(c, alpha_steps=0, warm=warm) >= plain - 1e-12).all())
    wild = {"theta": {i: torch.full_like(t, 5.0) for i, t in warm["theta"].items()},
            "beta": {i: torch.full((1, 2, *splits.shape[1:]), -3.0) for i in warm["theta"]}}
    for start in (warm, wild):
        low = child.lower(c, alpha_steps=5, warm=start)[0].numpy()
        assert np.all(low <= np.array(truth) + 1e-9)


def test_a_dense_step_back_propagates_through_its_weight_matrix():
    model, params = mlp(3, (5,), 12)
    g64 = float64_graph(to_torch(model))
    prop = Propagation(g64, Region.box(-torch.ones((2, 3), dtype=torch.float64), torch.ones((2, 3),
                                                                                              dtype=torch.float64)))
    index = next(i for i, (op, _, _) in enumerate(prop.steps) if op.op_type == "Gemm")
    op, inputs, _ = prop.steps[index]
    matrix = prop._dense_matrix(op, inputs, prop._args(inputs, prop.bounds))
    weight = next(w for k, w in params.items() if w.shape == (5, 3))
    assert matrix is not None and np.array_equal(matrix.numpy(), weight)


def test_every_disjunct_is_refuted_on_its_own_and_a_reachable_one_is_never_proved():
    """Two outputs, unsafe ``y0 <= t0`` or ``y1 <= t1``: below both grid minima it holds; with one threshold
    above its minimum it is never proved."""
    m = Model((1, 2), 13, scale=1.0)
    h = "x"
    for fan_in in (2, 10):
        h = m.add("Relu", [m.add("Gemm", [h, m.weight(10, fan_in), m.weight(10)], transB=1)])
    model = m.model(m.add("Gemm", [h, m.weight(2, 10), m.weight(2)], transB=1), ["N", 2])
    g64 = float64_graph(to_torch(model))
    lower, upper = -np.ones(2), np.ones(2)
    values = grid_values(g64, lower, upper, 401)
    square = values.reshape(401, 401, 2)
    slope = np.abs(np.diff(square, axis=0)).max((0, 1)) + np.abs(np.diff(square, axis=1)).max((0, 1))
    below = values.min(0) - np.maximum(0.05, 2 * slope)

    def run(thresholds, seconds):
        def candidate(xs):
            with torch.no_grad():
                y = g64(torch.as_tensor(xs)).numpy()
            bad = np.flatnonzero((y <= thresholds).any(1))
            return xs[bad[0]] if bad.size else None

        spec = Spec(np.eye(2), thresholds, [np.array([0]), np.array([1])], np.zeros(2))
        return ReluSearch(g64, (2,)).run(lower, upper, spec, 0.0, time.monotonic() + seconds, candidate)

    assert run(below, 20).result == "holds"
    assert run(np.array([below[0], values.min(0)[1] + 1e-3]), 4).result != "holds"


def test_a_deadline_passed_before_the_search_is_a_timeout_not_an_error():
    model, _ = mlp(20, (8,), 3)
    prop = parse_vnnlib(vnnlib_below(20, -1e6))
    outcome = engine(to_torch(model), (20,)).branch_and_bound(prop.cases[0], 0.0, time.monotonic() - 1.0,
                                                             lambda xs: None)
    assert outcome.result == "timeout" and outcome.domains == 0


def test_split_depth_fills_the_batch_and_stays_within_its_limits():
    assert split_depth(1, 16) == 4 and split_depth(3, 16) == 2 and split_depth(8, 16) == 1
    assert split_depth(500, 16) == 1 and split_depth(1, 2**20) == MAX_SPLIT_DEPTH


def test_a_subdomain_split_on_several_neurons_gets_every_sign_combination_once():
    model, _ = mlp(2, (6,), 3)
    g64 = float64_graph(to_torch(model))
    relu = ReluSearch(g64, (2,))
    name = relu.names[0]
    zeros = torch.zeros((2, 6))
    parents = Domains({name: torch.zeros((2, 6), dtype=torch.int8)}, {name: zeros - 1}, {name: zeros + 1}, {}, {},
                      torch.tensor([[4, 1], [2, -1]]), torch.zeros(2), torch.zeros((2, 1)), torch.zeros((2, 1)))
    children = relu._children(parents, depth=2)
    signs = children.splits[name].tolist()
    first = sorted((s[4], s[1]) for s in signs if s[4] != 0)
    assert first == [(-1, -1), (-1, 1), (1, -1), (1, 1)]  # the parent with two neurons left: four children
    second = sorted(s[2] for s in signs if s[4] == 0)
    assert second == [-1, 1]  # the parent with one neuron left: two
    assert all(sum(v != 0 for v in s) == (2 if s[4] else 1) for s in signs)
