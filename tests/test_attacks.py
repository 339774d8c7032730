"""Attacks on small real models trained here on scikit-learn's digits (and a closed-form linear classifier).

The helpers at the top are shared with test_robustness.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from certify.attacks import ATTACKS, PRESETS, Box, build_attack, resolve_attacks
from certify.attacks.batching import AttackRunner, for_batches
from certify.attacks.box import distances
from certify.tracker import Cancelled


def digits(n_train: int = 1000, n_test: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] (64 features), split into a training and a test part."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 150, seed: int = 0) -> torch.nn.Module:
    """Full-batch Adam on cross-entropy; deterministic for a seed."""
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def mlp(x, y, hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return train(torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)), x, y,
                 seed=seed)


def linear(x, y, seed: int = 0, classes: int = 10) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return train(torch.nn.Linear(64, classes), x, y, seed=seed)


def exact_min_distance(model: torch.nn.Linear, x: np.ndarray, y: np.ndarray, norm: str) -> np.ndarray:
    """Closed-form minimal adversarial distance of a linear classifier without a box: min over k of
    (z_y - z_k) / ||w_y - w_k||_dual (L2: dual L2; L-inf: dual L1). Also its exact certified radius."""
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    z = x.astype(np.float64) @ w.T + b
    out = np.empty(len(x))
    for i, (zi, yi) in enumerate(zip(z, y)):
        diff = w[yi] - w
        dual = np.abs(diff).sum(axis=1) if norm == "linf" else np.linalg.norm(diff, axis=1)
        ratios = (zi[yi] - zi) / np.where(dual > 0, dual, np.inf)
        ratios[yi] = np.inf
        out[i] = max(0.0, ratios.min())
    return out


class GradientMasked(torch.nn.Module):
    """A model whose input gradient is zero almost everywhere (inputs are quantised first): gradient attacks see
    nothing, a score-based attack still works."""

    def __init__(self, inner: torch.nn.Module, levels: int = 4):
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


class CountingModel(torch.nn.Module):
    """Counts forward passes (to see how far a run went after cancellation)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def model(data):
    x, y, _, _ = data
    return mlp(x, y)


@pytest.fixture(scope="module")
def correct(model, data):
    """Correctly classified test samples (as tensors)."""
    _, _, xs, ys = data
    xt, yt = torch.tensor(xs), torch.tensor(ys)
    with torch.no_grad():
        ok = model(xt).argmax(1) == yt
    return xt[ok][:40], yt[ok][:40]


def run(model, attack, x, y, norm, eps, box=(0.0, 1.0), seed=0, **params):
    for p in model.parameters():
        p.requires_grad_(False)
    runner = AttackRunner(model, Box(*box), device=torch.device("cpu"), seed=seed)
    return runner.run(build_attack(attack, **params), x, y, norm, eps)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


FAST = {"fgsm": {}, "pgd": {"steps": 10}, "apgd-ce": {"steps": 20}, "apgd-dlr": {"steps": 20},
        "square": {"queries": 100}}
BOUNDED = [(name, norm) for name in FAST for norm in ("l2", "linf")]


@pytest.mark.parametrize("norm, eps", [("linf", 1.0), ("l2", 8.0)])
def test_pgd_at_a_large_eps_drives_accuracy_to_zero(model, correct, norm, eps):
    x, y = correct
    assert accuracy(model, x, y) == 1.0
    x_adv = run(model, "pgd", x, y, norm, eps, steps=20)
    assert accuracy(model, x_adv, y) <= 0.05


@pytest.mark.parametrize("name, norm", BOUNDED)
def test_eps_zero_changes_nothing(model, correct, name, norm):
    x, y = correct
    x_adv = run(model, name, x, y, norm, 0.0, **FAST[name])
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("name, norm", BOUNDED)
@pytest.mark.parametrize("eps", [0.03, 0.3, 2.0])
def test_adversarial_inputs_stay_in_the_box_and_the_ball(model, correct, name, norm, eps):
    x, y = correct
    box = (0.0, 0.9)  # digits reach 1.0: the box binds, and the clean inputs may sit outside it by up to 0.1
    x_in = x.clamp(*box)
    x_adv = run(model, name, x_in, y, norm, eps, box=box, **FAST[name])
    d = distances(x_adv, x_in, norm)
    assert bool((d <= eps).all()), float(d.max())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 0.9


@pytest.mark.parametrize("name, norm", [("cw", "l2"), ("deepfool", "l2"), ("deepfool", "linf"), ("lbfgs", "l2")])
def test_minimal_attacks_stay_in_the_box(model, correct, name, norm):
    x, y = correct
    x_adv = run(model, name, x[:10], y[:10], norm, None, box=(0.0, 1.0), **({"steps": 20} if name != "lbfgs" else
                                                                             {"iterations": 20, "binary_steps": 3}))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert accuracy(model, x_adv, y[:10]) <= 0.2


@pytest.fixture(scope="module")
def linear_model(data):
    x, y, _, _ = data
    return linear(x, y)


@pytest.fixture(scope="module")
def binary_linear_model(data):
    """Digits below 5 against the rest: a two-class linear model, for which the CW problem is convex."""
    x, y, _, _ = data
    return linear(x, (y >= 5).astype(np.int64), classes=2)


@pytest.mark.parametrize("name, norm, classes", [("deepfool", "l2", 10), ("deepfool", "linf", 10),
                                                 ("deepfool", "l2", 2), ("cw", "l2", 2)])
def test_minimal_attacks_match_the_exact_distance_of_a_linear_model(linear_model, binary_linear_model, data, name,
                                                                     norm, classes):
    model = linear_model if classes == 10 else binary_linear_model
    _, _, xs, ys = data
    xs, ys = xs[:20], (ys[:20] if classes == 10 else (ys[:20] >= 5).astype(np.int64))
    xt, yt = torch.tensor(xs), torch.tensor(ys)
    exact = exact_min_distance(model, xs, ys, norm)
    ok = exact > 0
    # A box far wider than the data does not bind, so the closed form is the true minimal distance.
    x_adv = run(model, name, xt, yt, norm, None, box=(-100.0, 100.0))
    found = distances(x_adv, xt, norm).numpy()
    with torch.no_grad():
        broken = (model(x_adv).argmax(1) != yt).numpy()
    assert ok.sum() >= 15 and broken[ok].all()
    assert np.all(found[ok] >= exact[ok] * (1 - 1e-4))  # nothing beats the exact minimum
    assert np.all(found[ok] <= exact[ok] * 1.05), np.max(found[ok] / exact[ok])


def test_lbfgs_finds_adversarials_no_closer_than_the_exact_minimum(linear_model, data):
    _, _, xs, ys = data
    xt, yt = torch.tensor(xs[:10]), torch.tensor(ys[:10])
    exact = exact_min_distance(linear_model, xs[:10], ys[:10], "l2")
    x_adv = run(linear_model, "lbfgs", xt, yt, "l2", None, box=(-100.0, 100.0), iterations=30, binary_steps=6)
    found = distances(x_adv, xt, "l2").numpy()
    with torch.no_grad():
        broken = (linear_model(x_adv).argmax(1) != yt).numpy()
    ok = exact > 0
    assert broken[ok].mean() >= 0.8
    assert np.all(found[broken] >= exact[broken] * (1 - 1e-4))


@pytest.mark.parametrize("name", ["pgd", "square", "apgd-ce"])
def test_same_seed_same_result(model, correct, name):
    x, y = correct
    a = run(model, name, x, y, "l2", 0.5, seed=3, **FAST[name])
    b = run(model, name, x, y, "l2", 0.5, seed=3, **FAST[name])
    c = run(model, name, x, y, "l2", 0.5, seed=4, **FAST[name])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_a_cancelled_attack_stops_within_one_step(model, correct):
    x, y = correct
    counting = CountingModel(model)
    seen = {"checks": 0, "calls_at_cancel": None}

    def step():
        seen["checks"] += 1
        if seen["checks"] >= 5:
            seen["calls_at_cancel"] = counting.calls
            raise Cancelled("stop")

    runner = AttackRunner(counting, Box(0.0, 1.0), device=torch.device("cpu"), step=step)
    with pytest.raises(Cancelled):
        runner.run(build_attack("pgd", steps=1000), x, y, "linf", 0.1)
    assert counting.calls == seen["calls_at_cancel"] == 4


def test_square_breaks_a_gradient_masked_model(model, correct):
    x, y = correct
    masked = GradientMasked(model)
    x_pgd = run(masked, "pgd", x, y, "linf", 0.3, steps=10, random_start=False)
    x_square = run(masked, "square", x, y, "linf", 0.3, queries=300)
    assert accuracy(masked, x_pgd, y) >= accuracy(masked, x, y) - 0.05  # zero gradients: PGD does not move
    assert accuracy(masked, x_square, y) <= 0.5


def test_apgd_is_at_least_as_strong_as_fgsm(model, correct):
    x, y = correct
    acc_fgsm = accuracy(model, run(model, "fgsm", x, y, "linf", 0.1), y)
    acc_apgd = accuracy(model, run(model, "apgd-ce", x, y, "linf", 0.1, steps=30), y)
    assert acc_apgd <= acc_fgsm


def test_out_of_memory_halves_the_batch_and_retries():
    seen = []

    def fn(start, end):
        if end - start > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: no GPU on this machine)")
        seen.append((start, end))

    final = for_batches(30, 64, fn, torch.device("cpu"))
    assert final == 8
    assert seen[0] == (0, 8) and seen[-1][1] == 30
    assert sum(e - s for s, e in seen) == 30


def test_other_errors_are_not_taken_for_out_of_memory():
    def fn(start, end):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        for_batches(10, 4, fn, torch.device("cpu"))


def test_presets_and_names():
    assert [a.name for a in resolve_attacks("quick")] == ["fgsm", "pgd"]
    assert [a.name for a in resolve_attacks("standard")] == ["apgd-ce", "apgd-dlr", "square"]
    thorough = [a.name for a in resolve_attacks("thorough")]
    assert thorough[:3] == ["apgd-ce", "apgd-dlr", "square"] and {"pgd", "cw", "deepfool"} <= set(thorough)
    assert resolve_attacks("standard")[2].params["queries"] == 1000
    assert set(PRESETS) == {"quick", "standard", "thorough"}
    assert {"fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "cw", "deepfool", "lbfgs"} <= set(ATTACKS)


@pytest.mark.parametrize("bad, match", [
    ("nope", "unknown attack preset"), (["nope"], "unknown attack"), ([], "must not be empty"),
    ([("pgd", {"stepz": 3})], "unknown parameter"), ([("pgd", {"steps": 0})], "positive integer"),
    ([("pgd", {"schedule": "wavy"})], "schedule"), ([("apgd-ce", {"rho": 2.0})], "rho"),
])
def test_bad_attack_specs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        resolve_attacks(bad)


def test_box_refuses_inputs_outside_and_bad_ranges():
    with pytest.raises(ValueError, match="outside input_range"):
        Box(0.0, 1.0).check_inside(np.array([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="lower end"):
        Box(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        Box(0.0, math.inf)
