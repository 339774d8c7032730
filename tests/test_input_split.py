"""Input splitting against a dense grid on 2-D nets: it proves true properties plain CROWN cannot, never proves one
a grid point breaks, and its bisection covers every box exactly; steps without a deadline of their own stop
between chunks before the deadline."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

from certify.convert import to_torch
from certify.decide import load_decider
from certify.input_split import Boxes, _pop, bisect, in_chunks
from certify.local.bounds import BoundTimeout, float64_graph
from certify.vnnlib import parse_vnnlib
from tests.test_bab import mlp, root_bound


def below(threshold: float) -> str:
    return ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (>= X_1 -1))(assert (<= X_1 1))\n"
            f"(assert (<= Y_0 {float(threshold)!r}))\n")


@pytest.mark.parametrize("seed", [1])
def test_input_splitting_proves_below_the_grid_minimum_and_never_above_it(tmp_path, seed):
    model, _ = mlp(2, (10, 10), seed)
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    g64 = float64_graph(to_torch(model))
    axis = np.linspace(-1, 1, 401)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    with torch.no_grad():
        square = g64(torch.as_tensor(grid)).flatten().numpy().reshape(401, 401)
    slope = np.abs(np.diff(square, axis=0)).max() + np.abs(np.diff(square, axis=1)).max()
    threshold = square.min() - max(0.05, 2 * slope)
    assert root_bound(g64, -np.ones(2), np.ones(2)) < threshold  # the root's bound does not prove it
    prop = parse_vnnlib(below(threshold))
    decider = load_decider(str(path), prop)
    verdict = decider.decide(prop, timeout=30)
    assert (verdict.result, verdict.method) == ("holds", "input-split") and verdict.stats["proved"] >= 2
    prop = parse_vnnlib(below(square.min() + 1e-3))  # a grid point breaks it
    verdict = decider.decide(prop, timeout=3)
    assert verdict.result != "holds" and verdict.seconds < 3.5
    if verdict.result == "violated":
        assert verdict.counterexample.y[0] <= square.min() + 1e-3


def test_bisection_covers_each_box_and_the_stack_pops_the_deepest_first():
    rng = np.random.default_rng(0)
    lower = rng.uniform(-1, 0, (5, 3))
    upper = lower + rng.uniform(0.1, 1, (5, 3))
    boxes = Boxes(lower, upper, np.zeros((5, 2)), {})
    dims = np.array([0, 1, 2, 0, 1])
    halves = bisect(boxes, dims)
    left, right = halves.take(np.arange(5)), halves.take(np.arange(5, 10))
    rows = np.arange(5)
    assert np.array_equal(left.lower, lower) and np.array_equal(right.upper, upper)
    assert np.array_equal(left.upper[rows, dims], right.lower[rows, dims])
    assert np.allclose(left.upper[rows, dims], (lower[rows, dims] + upper[rows, dims]) / 2)
    stack = [boxes, halves]
    top = _pop(stack, 12)
    assert len(top) == 12 and np.array_equal(top.lower[:10], halves.lower) and len(stack[0]) == 3


def test_a_step_without_its_own_deadline_stops_between_chunks_at_the_measured_pace():
    def slow(index):  # 2 ms per box
        time.sleep(0.002 * len(index))
        return index * 2.0

    assert np.array_equal(in_chunks(slow, 300, time.monotonic() + 60, first=7), np.arange(300) * 2.0)
    start = time.monotonic()
    with pytest.raises(BoundTimeout):
        in_chunks(slow, 100_000, start + 0.5, first=4)
    assert time.monotonic() - start < 0.5 + 0.1  # it does not start a chunk the pace says would overrun
