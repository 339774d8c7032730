"""The pipeline end to end on the example model: real conversion, bounds, attacks, a signed report."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from certify.datasets import load_dataset
from certify.errors import ModelRejected
from certify.pipeline import Cancelled, run_pipeline
from certify.report.keys import load_public_key, write_keypair
from certify.report.verify import verify_report
from tests.conftest import EXAMPLE_DATA, EXAMPLE_MODEL
from tests.onnx_builders import relu_model

FAST = {"norms": ["l2"], "epsilons": [0.05, 0.2], "samples": 24, "attacks": "quick"}


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    write_keypair(d / "key.pem", d / "key.pub.pem")
    return d / "key.pem", d / "key.pub.pem"


@pytest.fixture(scope="module")
def signed_run(keypair):
    from certify.report.keys import load_signer

    stages = []
    result = run_pipeline(EXAMPLE_MODEL, FAST, dataset=EXAMPLE_DATA, signer=load_signer(keypair[0]),
                          progress=lambda stage, fraction, message: stages.append((stage, fraction)))
    return result, stages


def test_signed_report_verifies_against_the_model(signed_run, keypair):
    result, _ = signed_run
    verified = verify_report(result.envelope, [load_public_key(keypair[1])], model=EXAMPLE_MODEL)
    assert verified.model_checked
    p = verified.predicate
    assert p["conversion"]["max_rel_diff"] < 1e-5
    assert p["dataset"]["samples"] == 24


def test_report_sandwich_is_consistent(signed_run):
    p = signed_run[0].statement["predicate"]
    network = p["bounds"]["network"]
    assert network["upper"] is not None and network["lower"] <= network["upper"] <= network["product"] * (1 + 1e-9)
    for eps, certified in p["certified"]["accuracy"]["l2"].items():
        attacked = p["attacks"]["results"]["l2"][eps]["robust_accuracy"]
        assert certified <= attacked, (eps, certified, attacked)
    assert all(c["passed"] for c in p["attacks"]["sanity_checks"])


def test_progress_covers_every_stage_in_order(signed_run):
    result, stages = signed_run
    seen = list(dict.fromkeys(s for s, _ in stages))
    assert seen == ["load", "convert", "conversion_check", "bounds", "certified", "attacks", "report"]
    assert all(0.0 <= f <= 1.0 for _, f in stages)
    assert [s["status"] for s in result.stages] == ["done"] * 7


def test_without_data_the_data_stages_are_skipped_with_reason():
    result = run_pipeline(EXAMPLE_MODEL, {"attacks": "quick"})
    p = result.statement["predicate"]
    assert p["dataset"] is None
    assert p["certified"] == {"status": "skipped", "reason": "no dataset was given"}
    assert p["attacks"]["status"] == "skipped"
    assert p["bounds"]["network"]["upper"] > 0
    assert result.envelope is None


def test_cancellation_stops_at_the_next_progress_point():
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        run_pipeline(EXAMPLE_MODEL, FAST, dataset=EXAMPLE_DATA, cancelled=cancelled)
    assert len(calls) == 4


def test_policy_is_evaluated_into_the_report():
    cfg = dict(FAST, attacks="none", policy={"min_clean_accuracy": 0.5, "max_lipschitz_upper": 1.0})
    p = run_pipeline(EXAMPLE_MODEL, cfg, dataset=EXAMPLE_DATA).statement["predicate"]
    verdicts = {c["name"]: c["verdict"] for c in p["policy"]["checks"]}
    assert verdicts == {"min_clean_accuracy": "pass", "max_lipschitz_upper": "fail"}
    assert p["policy"]["verdict"] == "fail"


@pytest.mark.parametrize("config, field", [
    ({"epsilons": [-1]}, "epsilons"),
    ({"norms": ["l7"]}, "norms"),
    ({"attacks": "everything"}, "attacks"),
    ({"input_range": [1, 0]}, "input_range"),
    ({"surprise": 1}, "surprise"),
    ({"policy": {"min_clean_acuracy": 0.9}}, "policy"),
])
def test_bad_config_names_the_field(config, field):
    with pytest.raises(ModelRejected) as info:
        run_pipeline(EXAMPLE_MODEL, config)
    assert info.value.code == "invalid_config"
    assert field in info.value.message


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_DATASETS = [
    (_npz(x=np.zeros((3, 64), np.float32)), "dataset_missing_arrays", "needs arrays 'x' and 'y'"),
    (_npz(x=np.zeros((3, 64), np.float32), y=np.zeros(4, np.int64)), "bad_dataset", "same non-zero length"),
    (_npz(x=np.zeros((3, 64), np.int32), y=np.zeros(3, np.int64)), "bad_dataset", "floating point"),
    (_npz(x=np.full((3, 64), np.nan, np.float32), y=np.zeros(3, np.int64)), "bad_dataset", "NaN"),
    (_npz(x=np.zeros((3, 64), np.float32), y=-np.ones(3, np.int64)), "bad_dataset", "negative labels"),
    (_npz(x=np.zeros((3, 64), np.float32), y=np.array([{"a": 1}] * 3, dtype=object)), "dataset_pickled",
     "without pickle"),
    (b"PK\x03\x04 not a zip", "not_npz", "not a readable .npz"),
]


@pytest.mark.parametrize("data, code, words", BAD_DATASETS + [
    (_npz(x=np.zeros((3, 65), np.float32), y=np.zeros(3, np.int64)), "dataset_model_mismatch",
     "per-sample shape [65]")])
def test_bad_dataset_is_refused(data, code, words):
    with pytest.raises(ModelRejected) as info:
        load_dataset(data, (64,), 10)
    assert info.value.code == code
    assert words in info.value.message


@pytest.mark.parametrize("data, code, words", BAD_DATASETS)
def test_the_service_refuses_the_same_datasets_with_the_same_codes(tmp_path, data, code, words):
    from service.datasets import inspect_dataset

    (tmp_path / "d.npz").write_bytes(data)
    with pytest.raises(ModelRejected) as info:
        inspect_dataset(str(tmp_path / "d.npz"), 1 << 20)
    assert (info.value.code, words in info.value.message) == (code, True)


def test_cli_certify_writes_a_report_that_verifies(tmp_path, keypair):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "certify", "certify", EXAMPLE_MODEL, "--data", EXAMPLE_DATA, "--eps", "0.05",
           "--samples", "16", "--attacks", "quick", "--key", str(keypair[0]), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[bounds]" in proc.stderr and "signed by key" in proc.stderr
    assert "Robustness report" in proc.stdout
    verify = subprocess.run([sys.executable, "-m", "certify", "verify", str(out), "--key", str(keypair[1]),
                             "--model", EXAMPLE_MODEL], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(out.read_text())["payloadType"] == "application/vnd.in-toto+json"


def test_transfer_to_itself_transfers_every_success_and_other_shapes_are_refused(tmp_path):
    cfg = dict(FAST, attacks=["fgsm"])
    p = run_pipeline(EXAMPLE_MODEL, cfg, dataset=EXAMPLE_DATA, transfer_to=[EXAMPLE_MODEL]).statement["predicate"]
    (entry,) = p["attacks"]["transfer"]
    per_eps = entry["results"]["l2"]["per_eps"]
    assert [row["eps"] for row in per_eps] == [0.05, 0.2]
    for row in per_eps:  # the same model: every example that fooled the source fools the target
        assert row["transfer_rate"] == 1.0 or row["source_success_rate"] == 0.0
    other = tmp_path / "relu.onnx"
    other.write_bytes(relu_model(shape=("N", 3)).SerializeToString())
    with pytest.raises(ModelRejected) as info:
        run_pipeline(EXAMPLE_MODEL, cfg, dataset=EXAMPLE_DATA, transfer_to=[str(other)])
    assert info.value.code == "transfer_model_mismatch"


def test_cli_certify_refuses_bad_eps_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "certify", "certify", EXAMPLE_MODEL, "--eps", "a,b"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: bad_argument")


def test_cli_bounds_refuses_a_dataset_of_the_wrong_shape_with_exit_2(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(_npz(x=np.zeros((3, 65), np.float32), y=np.zeros(3, np.int64)))
    proc = subprocess.run([sys.executable, "-m", "certify", "bounds", EXAMPLE_MODEL, "--data", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: dataset_model_mismatch: x has per-sample shape [65]")


def test_infinite_radii_reach_the_cross_check_as_infinite():
    from certify.verdicts import certified_radii_of

    radii = certified_radii_of({"certified": {"radii": [0.5, None, 0.0]}})
    assert radii[0] == 0.5 and np.isinf(radii[1]) and radii[2] == 0.0


def test_report_records_the_float_error_taken_from_the_margins(signed_run):
    certified = signed_run[0].statement["predicate"]["certified"]
    assert "float forward error" in certified["method"]
    error = certified["float_error"]["l2"]
    assert 0 < error["max_at_sample"] < 0.1 and error["max_growth"] >= 0
