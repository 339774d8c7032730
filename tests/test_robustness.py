"""certify.robustness.evaluate / transfer on small real models trained on scikit-learn's digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_attacks import (  # noqa: F401  (one_thread: the same autouse fixture)
    CountingModel,
    GradientMasked,
    digits,
    exact_min_distance,
    linear,
    mlp,
    one_thread,
)

from certify.robustness import SoundnessError, evaluate, transfer
from certify.tracker import Cancelled

FAST = [("fgsm", {}), ("pgd", {"steps": 10})]
EPS = (0.0, 0.05, 0.2, 0.5)


@pytest.fixture(scope="module")
def data():
    x, y, xs, ys = digits(n_test=40)
    return x, y, xs, ys


@pytest.fixture(scope="module")
def model(data):
    return mlp(data[0], data[1])


@pytest.fixture(scope="module")
def result(model, data):
    _, _, xs, ys = data
    return evaluate(model, xs, ys, norms=("l2", "linf"), epsilons=EPS, attacks=FAST, seed=1)


def test_result_is_plain_data_with_every_part(result, model, data):
    _, _, xs, ys = data
    json.dumps(result)  # plain JSON-serialisable data
    with torch.no_grad():
        clean = float((model(torch.tensor(xs)).argmax(1).numpy() == ys).mean())
    assert result["clean_accuracy"] == pytest.approx(clean)
    assert [a["name"] for a in result["attacks"]] == ["fgsm", "pgd"]
    assert result["attacks"][1]["params"]["steps"] == 10
    assert {(r["attack"], r["norm"], r["eps"]) for r in result["runs"]} >= {("pgd", "linf", 0.2), ("fgsm", "l2", 0.0)}
    for norm in ("l2", "linf"):
        res = result["results"][norm]
        assert res["epsilons"] == list(EPS)
        assert set(res["per_attack"]) == {"fgsm", "pgd"}
        assert res["robust_accuracy"][0] == pytest.approx(clean)  # eps 0 changes nothing
        stats = res["minimal_perturbation"]
        assert stats["n_found"] > 0 and 0 < stats["median"] <= max(EPS)
        assert stats["percentiles"]["5"] <= stats["median"] <= stats["percentiles"]["95"]
        hist = stats["histogram"]
        assert sum(hist["counts"]) == stats["n_found"] and len(hist["edges"]) == len(hist["counts"]) + 1
        assert hist["edges"][0] == stats["min"] and hist["edges"][-1] == pytest.approx(stats["max"])
        assert stats["average_minimum_distortion"] > 0
    assert {c["name"] for c in result["sanity_checks"]} >= {"monotone_in_eps/l2", "large_eps_breaks_all/linf"}
    assert all(c["passed"] for c in result["sanity_checks"]), result["sanity_checks"]
    assert result["warnings"] == []


def test_worst_case_is_monotone_and_no_better_than_any_attack(result):
    for res in result["results"].values():
        ra = res["robust_accuracy"]
        assert all(a >= b for a, b in zip(ra, ra[1:]))
        for per in res["per_attack"].values():
            assert all(w <= a for w, a in zip(ra, per["robust_accuracy"]))
        assert res["robust_accuracy"][-1] < res["robust_accuracy"][0]


def test_examples_are_real_adversarial_examples(result, model):
    examples = result["results"]["linf"]["examples"]
    assert 0 < len(examples) <= 5
    for ex in examples:
        orig, pert = np.array(ex["original"]), np.array(ex["perturbed"])
        assert np.allclose(pert - orig, ex["difference"])
        assert np.abs(pert - orig).max() == pytest.approx(ex["distance"])
        assert ex["distance"] <= ex["eps"]
        with torch.no_grad():
            pred = int(model(torch.tensor(pert, dtype=torch.float32)[None]).argmax())
        assert pred == ex["adversarial_prediction"] != ex["label"] == ex["clean_prediction"]


def test_same_seed_same_result(model, data, result):
    _, _, xs, ys = data
    again = evaluate(model, xs, ys, norms=("l2", "linf"), epsilons=EPS, attacks=FAST, seed=1)
    assert again["results"] == result["results"]


def test_progress_reaches_one_and_cancellation_stops_within_one_step(model, data):
    _, _, xs, ys = data
    seen = []
    evaluate(model, xs, ys, epsilons=(0.1,), attacks=FAST, progress=lambda s, f, m: seen.append((s, f, m)))
    assert {s for s, _, _ in seen} == {"attacks"} and seen[-1][1] == 1.0
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions)

    counting = CountingModel(model)
    checks = {"n": 0, "calls": None}

    def cancelled():
        checks["n"] += 1
        if checks["n"] >= 6 and checks["calls"] is None:
            checks["calls"] = counting.calls
        return checks["calls"] is not None

    with pytest.raises(Cancelled):
        evaluate(counting, xs, ys, epsilons=(0.1,), attacks=[("pgd", {"steps": 500})], cancelled=cancelled)
    assert counting.calls == checks["calls"]


@pytest.fixture(scope="module")
def linear_model(data):
    return linear(data[0], data[1])


def test_linear_certified_radius_equals_minimal_adversarial_distance(linear_model, data):
    """For a linear classifier the exact certificate (margin / Lipschitz constant of each margin) and the minimal
    adversarial distance are the same number; DeepFool finds it, and the soundness check accepts it."""
    _, _, xs, ys = data
    radii = exact_min_distance(linear_model, xs, ys, "l2")
    res = evaluate(linear_model, xs, ys, norms=("l2",), epsilons=(0.1, 0.3), attacks=["deepfool"],
                   input_range=(-100.0, 100.0), certified_radii={"l2": radii}, large_eps_check=False)
    stats = res["results"]["l2"]["minimal_perturbation"]
    correct = radii > 0
    assert stats["n_found"] == correct.sum() and stats["n_not_found"] == 0
    assert stats["median"] == pytest.approx(np.median(radii[correct]), rel=1e-3)
    assert stats["mean"] == pytest.approx(np.mean(radii[correct]), rel=1e-3)
    for i in range(2):  # certified and attacked accuracy meet at both eps
        assert res["results"]["l2"]["certified_accuracy"][i] == pytest.approx(
            res["results"]["l2"]["robust_accuracy"][i], abs=1.0 / len(ys) + 1e-9)
    assert any(c["name"] == "certificate_consistent/l2" and c["passed"] for c in res["sanity_checks"])


def test_a_sample_broken_inside_its_certified_radius_fails_the_run(linear_model, data):
    _, _, xs, ys = data
    radii = exact_min_distance(linear_model, xs, ys, "l2") * 1.5  # an unsound "certificate"
    with pytest.raises(SoundnessError, match=r"sample \d+") as err:
        evaluate(linear_model, xs, ys, norms=("l2",), epsilons=(0.1,), attacks=["deepfool"],
                 input_range=(-100.0, 100.0), certified_radii={"l2": radii}, large_eps_check=False)
    assert radii[err.value.index] > err.value.distance


def test_gradient_masking_is_flagged(model, data):
    _, _, xs, ys = data
    masked = GradientMasked(model)
    res = evaluate(masked, xs, ys, norms=("linf",), epsilons=(0.3,),
                   attacks=[("pgd", {"steps": 10, "random_start": False}), ("square", {"queries": 200})])
    check = next(c for c in res["sanity_checks"] if c["name"] == "gradient_free_not_stronger/linf")
    assert not check["passed"] and "gradient masking" in check["detail"]
    assert any("gradient_free_not_stronger" in w for w in res["warnings"])


def test_a_constant_model_fails_the_large_eps_check(data):
    _, _, xs, ys = data
    constant = torch.nn.Linear(64, 10)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.arange(10.0) == int(ys[0]))
    res = evaluate(constant, xs, ys, norms=("linf",), epsilons=(0.1,), attacks=FAST)
    check = next(c for c in res["sanity_checks"] if c["name"] == "large_eps_breaks_all/linf")
    assert not check["passed"] and res["warnings"]


def test_transfer(model, data):
    x, y, xs, ys = data
    other = mlp(x, y, hidden=24, seed=1)
    res = transfer(model, other, xs, ys, norm="linf", epsilons=(0.05, 0.5), attack=("pgd", {"steps": 10}))
    json.dumps(res)
    low, high = res["per_eps"]
    assert high["source_success_rate"] >= 0.95
    assert 0.0 <= low["transfer_rate"] <= 1.0 and high["transfer_rate"] > 0.3
    same = transfer(model, model, xs, ys, norm="linf", epsilons=(0.1,), attack=("pgd", {"steps": 10}))
    assert same["per_eps"][0]["transfer_rate"] == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"attacks": ["nope"]}, "unknown attack"),
    ({"epsilons": (-0.1,)}, "eps"),
    ({"norms": ("l1",)}, "unknown norm"),
    ({"x": np.zeros((0, 64), np.float32), "y": np.zeros(0, np.int64)}, "empty"),
    ({"y": np.zeros(3, np.int64)}, "shape"),
    ({"x": np.full((40, 64), 2.0, np.float32)}, "outside input_range"),
    ({"input_range": (1.0, 0.0)}, "lower end"),
    ({"batch_size": 0}, "batch_size"),
    ({"certified_radii": {"l2": np.zeros(3)}}, "certified_radii"),
])
def test_bad_arguments_raise_value_error(model, data, kwargs, match):
    _, _, xs, ys = data
    args = {"x": xs, "y": ys, **kwargs}
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        evaluate(model, x, y, **args)


def test_an_attack_without_the_norm_is_skipped_and_recorded(model, data):
    _, _, xs, ys = data
    res = evaluate(model, xs[:10], ys[:10], norms=("linf",), epsilons=(0.1,),
                   attacks=[("cw", {"steps": 5, "binary_steps": 1})], large_eps_check=False)
    assert [(s["attack"], s["norm"]) for s in res["skipped"]] == [("cw", "linf")]
    assert res["results"]["linf"]["per_attack"] == {}
    assert any("no attack supports the linf norm" in w for w in res["warnings"])


def test_a_sample_certified_at_any_radius_is_still_attacked(linear_model, data):
    """An infinite radius is a claim like any other: the attacks at the job's largest eps check it."""
    _, _, xs, ys = data
    radii = np.where(exact_min_distance(linear_model, xs, ys, "l2") > 0, np.inf, 0.0)
    with pytest.raises(SoundnessError, match="radius inf"):
        evaluate(linear_model, xs, ys, norms=("l2",), epsilons=(0.01, 100.0), attacks=["pgd"],
                 input_range=(-100.0, 100.0), certified_radii={"l2": radii}, large_eps_check=False)
