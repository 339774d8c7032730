"""Properties in a certification job: checked when the job is configured, decided on the job's model within the
budget, and recorded with their hash, verdict and method."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from certify.errors import ModelRejected
from certify.properties import decide_properties, parse_specs

MODEL = "examples/digits_mlp.onnx"
DATA = "examples/digits_test.npz"


def robustness_property(x: np.ndarray, label: int, eps: float, n_out: int = 10) -> str:
    """The VNN-COMP robustness form: inputs in the eps-box around x (within [0, 1]); unsafe if any other class
    scores at least as high as ``label``."""
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, v in enumerate(x.ravel()):
        lines.append(f"(assert (>= X_{i} {max(0.0, float(v) - eps)!r}))")
        lines.append(f"(assert (<= X_{i} {min(1.0, float(v) + eps)!r}))")
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sample():
    data = np.load(DATA)
    return data["x"][0].astype(np.float64), int(data["y"][0])


def test_specs_are_checked_when_the_job_is_configured(sample):
    x, label = sample
    text = robustness_property(x, label, 0.001)
    (spec,) = parse_specs([{"name": "p0", "vnnlib": text}])
    assert spec.sha256 == hashlib.sha256(text.encode()).hexdigest() and spec.parsed.n_inputs == 64
    with pytest.raises(ModelRejected) as info:
        parse_specs([{"name": "p0", "vnnlib": text}, {"name": "p0", "vnnlib": text}])
    assert info.value.code == "invalid_config" and "properties[1].name" in info.value.message
    with pytest.raises(ModelRejected) as info:
        parse_specs([{"name": "ok", "vnnlib": text}, {"name": "bad", "vnnlib": "(assert (<= Y_0"}])
    assert info.value.code == "invalid_vnnlib" and info.value.message.startswith("properties[1] (bad)")


def test_holding_and_violated_properties_are_decided(sample):
    x, label = sample
    specs = parse_specs([{"name": "tiny", "vnnlib": robustness_property(x, label, 0.001)},
                         {"name": "huge", "vnnlib": robustness_property(x, label, 1.0)}])
    seen = []
    tiny, huge = decide_properties(MODEL, specs, 30, on_property=lambda k, n: seen.append((k, n)))
    assert tiny.result == "holds" and tiny.method != "none" and tiny.counterexample is None
    assert huge.result == "violated" and huge.counterexample is not None
    y = np.asarray(huge.counterexample["y"])
    assert np.max(np.delete(y, label)) >= y[label]  # the recorded outputs show the violation
    assert seen == [(1, 2), (2, 2)]
    assert tiny.to_dict()["sha256"] == specs[0].sha256 and "counterexample" not in tiny.to_dict()


def test_a_spent_budget_leaves_properties_unknown(sample):
    x, label = sample
    specs = parse_specs([{"name": "p", "vnnlib": robustness_property(x, label, 0.001)}])
    (result,) = decide_properties(MODEL, specs, 30, deadline=time.monotonic() - 1)
    assert result.result == "unknown" and "time budget" in result.reason


def test_a_property_that_does_not_fit_the_model_is_refused(sample):
    x, label = sample
    specs = parse_specs([{"name": "short", "vnnlib": robustness_property(x[:10], 0, 0.01)}])
    with pytest.raises(ModelRejected) as info:
        decide_properties(MODEL, specs, 5)
    assert info.value.code == "property_mismatch" and info.value.message.startswith("property short:")


def test_the_signed_report_carries_each_verdict_and_the_policy_requires_them(sample, tmp_path):
    from click.testing import CliRunner

    from certify.cli import main
    from certify.pipeline import run_pipeline
    from certify.report.render import render_report

    x, label = sample
    tiny, huge = robustness_property(x, label, 0.001), robustness_property(x, label, 1.0)
    cfg = {"attacks": "none", "samples": 20, "epsilons": [0.05], "property_timeout_s": 20,
           "properties": [{"name": "tiny", "vnnlib": tiny}, {"name": "huge", "vnnlib": huge}],
           "policy": {"version": 1, "require_properties": ["tiny"]}}
    statement = run_pipeline(MODEL, cfg, dataset=DATA).statement
    p = statement["predicate"]
    assert [(r["name"], r["result"]) for r in p["properties"]["results"]] == [("tiny", "holds"), ("huge", "violated")]
    assert p["config"]["properties"] == [{"name": "tiny", "sha256": hashlib.sha256(tiny.encode()).hexdigest()},
                                         {"name": "huge", "sha256": hashlib.sha256(huge.encode()).hexdigest()}]
    (check,) = p["policy"]["checks"]
    assert (check["name"], check["verdict"], check["detail"]) == ("require_properties", "pass", "1 of 1 hold")
    assert "properties" in [s["stage"] for s in p["stages"]]
    text = render_report(statement, "not verified")
    assert "VNN-LIB properties" in text and "violated" in text

    from certify.report.policy import evaluate_policy

    every = evaluate_policy({"version": 1, "require_properties": True}, p)
    assert every["verdict"] == "fail" and every["checks"][0]["value"] == ["huge (violated)"]
    none = evaluate_policy({"version": 1, "require_properties": True}, {**p, "properties": None})
    assert none["verdict"] == "fail" and "no properties section" in none["checks"][0]["detail"]

    prop = tmp_path / "near.vnnlib"
    prop.write_text(tiny)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["certify", MODEL, "--attacks", "none", "--eps", "0.05", "--quiet",
                                       "--property", str(prop), "--property-timeout", "20", "-o", str(out)])
    assert result.exit_code == 0, result.output
    missing = CliRunner().invoke(main, ["certify", MODEL, "--property", str(tmp_path / "nope.vnnlib")])
    assert missing.exit_code == 2 and "--property" in missing.output


def test_a_bad_property_is_refused_with_the_configuration():
    from certify.config import load_config

    with pytest.raises(ModelRejected) as info:
        load_config({"properties": [{"name": "p", "vnnlib": "(declare-const X_0 Real)(assert (<= Y_3 1))"}]})
    assert info.value.code == "invalid_config" and "properties" in info.value.message
    with pytest.raises(ModelRejected) as info:
        load_config({"properties": [{"name": "bad name!", "vnnlib": "x"}]})
    assert "properties" in info.value.message


def test_too_many_properties_a_bad_timeout_or_channel_axis_are_refused(sample, tmp_path):
    from click.testing import CliRunner

    from certify.cli import main
    from certify.config import load_config
    from certify.properties import MAX_PROPERTIES

    x, label = sample
    text = robustness_property(x, label, 0.001)
    with pytest.raises(ModelRejected) as info:
        parse_specs([{"name": f"p{i}", "vnnlib": text} for i in range(MAX_PROPERTIES + 1)])
    assert info.value.code == "invalid_config" and f"at most {MAX_PROPERTIES}" in info.value.message
    for bad in ({"property_timeout_s": 0}, {"preprocessing": {"mean": [0.5], "channel_axis": 2}}):
        with pytest.raises(ModelRejected) as info:
            load_config(bad)
        assert info.value.code == "invalid_config" and next(iter(bad)) in info.value.message
    prop = tmp_path / "p.vnnlib"
    prop.write_text(text)
    result = CliRunner().invoke(main, ["certify", MODEL, "--property", str(prop), "--property-timeout", "-1"])
    assert result.exit_code == 2 and "property_timeout_s" in result.output
