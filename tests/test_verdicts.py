"""One certified verdict per sample: global and local methods side by side in the pipeline, the report, the policy,
the cross-check and the fallback when the local engine refuses a node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from certify.datasets import load_dataset
from certify.errors import ModelRejected
from certify.pipeline import run_pipeline
from certify.report.policy import PolicyError, evaluate_policy, load_policy
from certify.report.statement import validate_predicate
from tests.conftest import EXAMPLE_DATA, EXAMPLE_MODEL

LOCAL = {"norms": ["linf"], "epsilons": [0.05], "samples": 20, "attacks": "quick"}


@pytest.fixture(scope="module")
def digits():
    return run_pipeline(EXAMPLE_MODEL, LOCAL, dataset=EXAMPLE_DATA).statement["predicate"]


def test_every_method_is_reported_and_the_best_is_between_them_and_the_attacks(digits):
    c = digits["certified"]
    methods = c["methods"]["linf"]["0.05"]
    assert set(methods) == {"global", "ibp", "crown", "local-lipschitz", "alpha-crown"}
    best = c["accuracy"]["linf"]["0.05"]
    attacked = digits["attacks"]["results"]["linf"]["0.05"]["robust_accuracy"]
    assert all(best >= v for v in methods.values())
    assert best <= attacked
    assert methods["crown"] > methods["global"]  # the local engine certifies where the global bound cannot
    assert methods["alpha-crown"] >= methods["crown"]  # never looser than CROWN
    per_sample = c["best_method"]["linf"]["0.05"]
    assert len(per_sample) == 20 and np.mean([m is not None for m in per_sample]) == pytest.approx(best)
    assert set(c["ms_per_sample"]["linf"]["0.05"]) == {"ibp", "crown", "local-lipschitz", "alpha-crown"}
    rows = digits["bounds"]["local_layers"]["linf"]["0.05"]
    assert rows and all(r["local_max"] <= r["global_upper"] * (1 + 1e-9) for r in rows)
    assert not validate_predicate(digits)


def test_the_schema_refuses_an_unknown_method(digits):
    bad = {**digits, "certified": {**digits["certified"], "methods": {"linf": {"0.05": {"guess": 0.9}}}}}
    assert validate_predicate(bad)


def test_certifiers_restrict_the_methods_and_unknown_names_are_refused():
    p = run_pipeline(EXAMPLE_MODEL, {**LOCAL, "samples": 8, "certifiers": ["global", "ibp"], "attacks": "none"},
                     dataset=EXAMPLE_DATA).statement["predicate"]
    assert set(p["certified"]["methods"]["linf"]["0.05"]) == {"global", "ibp"}
    with pytest.raises(ModelRejected, match="certifiers.*unknown certifier 'magic'") as e:
        run_pipeline(EXAMPLE_MODEL, {**LOCAL, "certifiers": ["magic"]})
    assert e.value.code == "invalid_config"


def _square_model() -> bytes:
    """logits = W (x * x): a product of two varying tensors, which the local engine has no relaxation for."""
    w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
         helper.make_node("MatMul", ["sq", "w"], ["logits"], name="dense")],
        "square", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_an_unsupported_node_falls_back_to_the_global_certificate_and_is_named():
    p = run_pipeline(_square_model(), {**LOCAL, "samples": 8, "attacks": "none"},
                     dataset=EXAMPLE_DATA).statement["predicate"]
    c = p["certified"]
    assert "square" in c["local"]["linf"]["skipped"]
    assert set(c["methods"]["linf"]["0.05"]) == {"global"}
    assert c["accuracy"]["linf"]["0.05"] == c["methods"]["linf"]["0.05"]["global"]
    assert not validate_predicate(p)


def test_a_wrong_local_verdict_fails_the_cross_check():
    """A sample claimed certified at 0.1 by a local method and broken by an attack at 0.05 is a soundness failure
    (the cross-check, like the global one, flags attacks strictly inside the certified radius)."""
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.local.samples import SampleVerdicts
    from certify.robustness import SoundnessError, evaluate
    from certify.verdicts import NormVerdicts

    x, y, _ = load_dataset(EXAMPLE_DATA, (64,), 20)
    module = to_torch(load_onnx(EXAMPLE_MODEL))
    n = len(y)
    everything = np.ones(n, bool)
    wrong = SampleVerdicts("linf", 0.1, ("crown",), everything, {"crown": everything}, {"crown": everything},
                           {"crown": np.ones(n)}, np.full(n, np.nan), {"crown": 0.0})
    verdicts = NormVerdicts("linf", everything, np.zeros(n), local={0.1: wrong})
    assert np.all(verdicts.radii() == 0.1)
    evaluate(module, x, y, norms=("linf",), epsilons=(0.05,), attacks="quick",
             certified_radii={"linf": NormVerdicts("linf", everything, np.zeros(n)).radii()})
    with pytest.raises(SoundnessError):
        evaluate(module, x, y, norms=("linf",), epsilons=(0.05,), attacks="quick",
                 certified_radii={"linf": verdicts.radii()})


def test_policy_method_reads_that_methods_accuracy(digits):
    methods = digits["certified"]["methods"]["linf"]["0.05"]
    policy = {"min_certified_accuracy": [{"norm": "linf", "eps": 0.05, "min": methods["crown"], "method": "crown"},
                                         {"norm": "linf", "eps": 0.05, "min": 0.01, "method": "global"}]}
    checks = evaluate_policy(policy, digits)["checks"]
    assert [c["verdict"] for c in checks] == ["pass", "fail"]
    assert checks[0]["name"] == "min_certified_accuracy[linf,0.05,crown]"
    with pytest.raises(PolicyError, match="unknown method 'magic'"):
        load_policy({"min_certified_accuracy": [{"norm": "linf", "eps": 0.05, "min": 0.5, "method": "magic"}]})


def test_text_and_html_show_each_method_beside_best_and_attacked(digits):
    from certify.report.html import render_report_html
    from certify.report.render import render_report

    statement = {"_type": "https://in-toto.io/Statement/v1", "predicate": digits,
                 "subject": [{"name": "digits", "digest": {"sha256": "0" * 64}}],
                 "predicateType": "https://lipcert.dev/robustness-report/v1"}
    text = render_report(statement, "not signed")
    for word in ("global", "crown", "alpha-crown", "best (certified)", "attacked", "local upper (max)"):
        assert word in text
    page = render_report_html(statement)
    for word in ("Certified accuracy per method", "alpha-crown", "Local layerwise bounds", "/2/Gemm"):
        assert word in page


def test_the_cli_flag_accepts_lists_and_refuses_unknown_names(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "certify", "certify", EXAMPLE_MODEL, "--data", EXAMPLE_DATA, "--samples", "4",
            "--norm", "linf", "--eps", "0.05", "--attacks", "none", "--json", "-q"]
    bad = subprocess.run(args + ["--certifiers", "global,magic"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad_argument: --certifiers magic")
    good = subprocess.run(args + ["--certifiers", "global,crown", "--certifiers", "ibp"], capture_output=True,
                          text=True)
    assert good.returncode == 0, good.stderr
    assert '"certifiers": [\n      "global",\n      "crown",\n      "ibp"' in good.stdout
    onnx.checker.check_model(onnx.load_model_from_string(_square_model()))


def test_the_certifier_names_are_the_engines():
    from certify.defaults import CERTIFIERS
    from certify.local.samples import METHODS
    from certify.verdicts import GLOBAL

    assert CERTIFIERS == (GLOBAL, *METHODS)


def test_bounds_with_data_prints_each_certifiers_accuracy():
    import json
    import subprocess
    import sys

    args = [sys.executable, "-m", "certify", "bounds", EXAMPLE_MODEL, "--data", EXAMPLE_DATA, "--samples", "6",
            "--norm", "linf", "--eps", "0.05", "--certifiers", "global,crown,local-lipschitz", "-q"]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "certified accuracy per method" in text and "crown" in text and "alpha-crown" not in text
    data = json.loads(subprocess.run(args + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert set(data["verdicts"]["methods"]["linf"]["0.05"]) == {"global", "crown", "local-lipschitz"}
    assert data["local_layers"]["0.05"]
