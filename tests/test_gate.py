"""The deployment policy and ``lipcert gate``: fail-closed checks, exit codes 0/1/2, and the JSON output."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from report_example import example_predicate

from certify.cli import main
from certify.report.dsse import dump_envelope, sign_statement
from certify.report.keys import Signer, generate_private_key
from certify.report.policy import PolicyError, evaluate_policy, load_policy, parse_age, read_policy
from certify.report.statement import build_statement, skipped

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
MODEL_BYTES = b"model bytes for the gate"

PASSING = {
    "version": 1,
    "min_clean_accuracy": 0.95,
    "min_certified_accuracy": [{"norm": "l2", "eps": 0.05, "min": 0.4}],
    "min_attacked_accuracy": [{"norm": "linf", "eps": 0.03, "min": 0.75}],
    "max_lipschitz_upper": 100.0,
    "required_attack_preset": "quick",
    "max_age": "7d",
    "require_sanity_checks": True,
}


def _created(age: timedelta) -> str:
    return (NOW - age).strftime("%Y-%m-%dT%H:%M:%SZ")


def _predicate(age=timedelta(hours=1), **kwargs) -> dict:
    return example_predicate(created=_created(age), **kwargs)


def _evaluate(policy: dict, predicate=None) -> dict:
    return evaluate_policy(policy, predicate or _predicate(), now=NOW)


def _check(result: dict, name: str) -> dict:
    [check] = [c for c in result["checks"] if c["name"] == name]
    return check


# --- policy evaluation -----------------------------------------------------------------------------------------


def test_a_report_meeting_every_threshold_passes():
    result = _evaluate(PASSING)
    assert result["verdict"] == "pass"
    assert [c["verdict"] for c in result["checks"]] == ["pass"] * 7
    assert _check(result, "min_certified_accuracy[l2,0.05]")["value"] == 0.402
    assert _check(result, "min_attacked_accuracy[linf,0.03]")["value"] == 0.79
    assert _check(result, "max_lipschitz_upper")["value"] == 71.6
    assert _check(result, "max_age")["value"] == 3600
    assert result["evaluated_at"] == "2026-11-25T12:00:00Z"


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"min_clean_accuracy": 0.99}, "min_clean_accuracy"),
        ({"min_certified_accuracy": [{"norm": "l2", "eps": 0.05, "min": 0.41}]}, "min_certified_accuracy[l2,0.05]"),
        ({"min_attacked_accuracy": [{"norm": "linf", "eps": 0.03, "min": 0.8}]}, "min_attacked_accuracy[linf,0.03]"),
        ({"max_lipschitz_upper": 71.5}, "max_lipschitz_upper"),
        ({"required_attack_preset": "thorough"}, "required_attack_preset"),
        ({"max_age": "30m"}, "max_age"),
    ],
)
def test_each_threshold_can_fail_the_policy(change, failing):
    result = _evaluate({**PASSING, **change})
    assert result["verdict"] == "fail"
    assert [c["name"] for c in result["checks"] if c["verdict"] == "fail"] == [failing]


def test_thresholds_are_inclusive():
    result = _evaluate({"min_clean_accuracy": 0.984, "max_lipschitz_upper": 71.6,
                        "min_certified_accuracy": [{"norm": "l2", "eps": 0.1, "min": 0.05}]})
    assert result["verdict"] == "pass"


def test_clean_accuracy_takes_the_lower_of_the_two_measurements():
    p = _predicate()
    p["attacks"]["clean_accuracy"] = 0.94
    check = _check(_evaluate({"min_clean_accuracy": 0.95}, p), "min_clean_accuracy")
    assert check["verdict"] == "fail" and check["value"] == 0.94 and "lowest: attacks" in check["detail"]


def test_missing_measurements_fail_with_the_reason():
    result = _evaluate(PASSING, _predicate(skipped_stages=True))
    assert result["verdict"] == "fail"
    failing = {c["name"]: c for c in result["checks"] if c["verdict"] == "fail"}
    assert set(failing) == {"min_clean_accuracy", "min_certified_accuracy[l2,0.05]",
                            "min_attacked_accuracy[linf,0.03]", "required_attack_preset", "require_sanity_checks"}
    for check in failing.values():
        assert check["value"] is None
        assert "skipped: no dataset was given" in check["detail"]


def test_an_unevaluated_radius_or_norm_fails():
    result = _evaluate({"min_certified_accuracy": [{"norm": "l2", "eps": 0.2, "min": 0.0},
                                                   {"norm": "linf", "eps": 0.01, "min": 0.0}],
                        "min_attacked_accuracy": [{"norm": "l2", "eps": 0.25, "min": 0.0}]})
    details = [c["detail"] for c in result["checks"]]
    assert [c["verdict"] for c in result["checks"]] == ["fail"] * 3
    assert "eps=0.2 was not evaluated (evaluated: 0.01, 0.05, 0.1)" in details[0]
    assert "no certified accuracy for norm linf" in details[1]
    assert "eps=0.25 was not evaluated" in details[2]


def test_radius_matching_tolerates_decimal_spelling():
    p = _predicate()
    p["certified"]["accuracy"]["l2"] = {"5e-2": 0.5}
    assert _check(_evaluate({"min_certified_accuracy": [{"norm": "l2", "eps": 0.05, "min": 0.5}]}, p),
                  "min_certified_accuracy[l2,0.05]")["verdict"] == "pass"


def test_a_network_without_a_guaranteed_bound_fails_the_lipschitz_check():
    p = _predicate()
    p["bounds"]["network"].update(upper=None, reason="no Lipschitz rule for Softmax")
    check = _check(_evaluate({"max_lipschitz_upper": 1e9}, p), "max_lipschitz_upper")
    assert check["verdict"] == "fail" and "no Lipschitz rule for Softmax" in check["detail"]
    p["bounds"] = skipped("bounds not computed")
    assert _check(_evaluate({"max_lipschitz_upper": 1e9}, p), "max_lipschitz_upper")["verdict"] == "fail"


def test_attack_preset_must_be_at_least_as_strong():
    p = _predicate()
    for preset, verdict in (("quick", "fail"), ("standard", "pass"), ("thorough", "pass"), (None, "fail")):
        p["attacks"]["preset"] = preset
        check = _check(_evaluate({"required_attack_preset": "standard"}, p), "required_attack_preset")
        assert check["verdict"] == verdict, preset


def test_freshness():
    for age, verdict in ((timedelta(days=6, hours=23), "pass"), (timedelta(days=7, seconds=1), "fail"),
                         (timedelta(minutes=-2), "pass"), (timedelta(hours=-1), "fail")):
        check = _check(_evaluate({"max_age": "7d"}, _predicate(age)), "max_age")
        assert check["verdict"] == verdict, (age, check)
    p = _predicate()
    p["created"] = "not a time"
    assert _check(_evaluate({"max_age": "7d"}, p), "max_age")["verdict"] == "fail"
    assert [parse_age(t) for t in ("90s", "30m", "12h", "7d", "2w", "1.5h")] == [90, 1800, 43200, 604800, 1209600,
                                                                                5400]


def test_sanity_checks():
    p = _predicate()
    p["attacks"]["sanity_checks"][1]["passed"] = False
    check = _check(_evaluate({"require_sanity_checks": True}, p), "require_sanity_checks")
    assert check["verdict"] == "fail" and check["value"] == ["monotone_in_eps"]
    named = _check(_evaluate({"require_sanity_checks": ["eps_zero_matches_clean", "gradient_masking"]}, p),
                   "require_sanity_checks")
    assert named["verdict"] == "fail" and named["value"] == ["gradient_masking (missing)"]
    assert _check(_evaluate({"require_sanity_checks": ["eps_zero_matches_clean"]}, p),
                  "require_sanity_checks")["verdict"] == "pass"
    p["attacks"]["sanity_checks"] = []
    assert _check(_evaluate({"require_sanity_checks": True}, p), "require_sanity_checks")["verdict"] == "fail"


def test_a_malformed_predicate_fails_closed_instead_of_crashing():
    for predicate in ({}, {"certified": "yes", "attacks": [], "bounds": {"network": 3}}, None):
        result = evaluate_policy(PASSING, predicate, now=NOW)
        assert result["verdict"] == "fail"
        assert all(c["verdict"] == "fail" for c in result["checks"])


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"min_clean_acc": 0.9}, "min_clean_acc: Unknown field"),
        ({"min_certified_accuracy": [{"norm": "l2", "eps": 0.1, "min": 0.5, "max": 1}]}, "Unknown field"),
        ({"min_certified_accuracy": [{"norm": "l2", "min": 0.5}]}, "eps"),
        ({"min_certified_accuracy": [{"norm": "l7", "eps": 0.1, "min": 0.5}]}, "norm"),
        ({"min_clean_accuracy": 1.5}, "min_clean_accuracy"),
        ({"min_clean_accuracy": "high"}, "min_clean_accuracy"),
        ({"max_age": "a week"}, "max_age"),
        ({"required_attack_preset": "none"}, "required_attack_preset"),
        ({"require_sanity_checks": "yes"}, "require_sanity_checks"),
        ({"version": 2, "min_clean_accuracy": 0.5}, "version"),
        ({}, "no checks"),
        ({"require_sanity_checks": False}, "no checks"),
        (["min_clean_accuracy"], "mapping"),
    ],
)
def test_invalid_policies_are_refused(policy, message):
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(policy)
    with pytest.raises(PolicyError):
        evaluate_policy(policy, _predicate(), now=NOW)


def test_evaluated_policy_fits_the_report_schema():
    from certify.report.statement import validate_predicate

    p = _predicate()
    p["policy"] = _evaluate(PASSING, p)
    assert validate_predicate(p) == []
    assert json.loads(json.dumps(p["policy"], allow_nan=False)) == p["policy"]


# --- documentation and CI examples ----------------------------------------------------------------------------


def test_the_documented_policy_example_is_valid():
    text = (REPO / "docs" / "verify.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    policies = [yaml.safe_load(b) for b in blocks if "min_clean_accuracy" in b]
    assert policies, "docs/verify.md shows a policy"
    for policy in policies:
        load_policy(policy)


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_call_the_gate(name):
    text = (REPO / "deploy" / "ci" / name).read_text()
    assert isinstance(yaml.safe_load(text), dict)
    assert "lipcert gate" in text and "--policy" in text and "--model" in text and "--key" in text


# --- the command -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(generate_private_key())


@pytest.fixture()
def make_report(tmp_path, signer):
    """Writes a signed report about ``model`` (default: the gated model's bytes) into tmp_path."""

    def write(predicate, name="report.json", model=MODEL_BYTES):
        statement = build_statement(model_name="model.onnx", model_sha256=hashlib.sha256(model).hexdigest(),
                                    predicate=predicate)
        (tmp_path / name).write_bytes(dump_envelope(sign_statement(statement, signer)))
        return tmp_path / name

    return write


@pytest.fixture()
def setup(tmp_path, signer, make_report):
    """A model, its fresh signed report, the public key and a policy the report meets."""
    (tmp_path / "model.onnx").write_bytes(MODEL_BYTES)
    (tmp_path / "key.pub.pem").write_text(signer.public_pem)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(PASSING))
    fresh = datetime.now(UTC) - timedelta(minutes=5)
    make_report(example_predicate(created=fresh.strftime("%Y-%m-%dT%H:%M:%SZ")))
    return tmp_path


def _gate(d, *extra, report="report.json", policy="policy.yaml", model="model.onnx"):
    args = ["gate", str(d / report), "--key", str(d / "key.pub.pem"), "--model", str(d / model),
            "--policy", str(d / policy), *extra]
    return CliRunner().invoke(main, args)


def test_gate_passes(setup):
    result = _gate(setup)
    assert result.exit_code == 0, result.output
    assert "PASS: all 7 checks passed" in result.output
    assert re.search(r"PASS +min_certified_accuracy\[l2,0\.05\] +0\.402 +0\.4", result.output)
    assert re.search(r"PASS +max_age +\d+s \(5m\) +7d +created .*, 5m ago", result.output)
    assert re.search(r"PASS +require_sanity_checks +all passed +all +\d+ of \d+ passed", result.output)


def test_gate_json_output(setup):
    result = _gate(setup, "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["verdict"] == "pass" and info["exit_code"] == 0
    assert info["verification"]["verified"] and info["verification"]["model_checked"]
    assert len(info["policy"]["checks"]) == 7


def test_gate_fails_on_a_threshold(setup):
    (setup / "strict.yaml").write_text("min_clean_accuracy: 0.99\nmax_lipschitz_upper: 10\n")
    result = _gate(setup, policy="strict.yaml")
    assert result.exit_code == 1
    assert "FAIL: 2 of 2 checks failed: min_clean_accuracy, max_lipschitz_upper" in result.output
    info = json.loads(_gate(setup, "--json", policy="strict.yaml").output)
    assert info["verdict"] == "fail" and info["exit_code"] == 1
    assert [c["verdict"] for c in info["policy"]["checks"]] == ["fail", "fail"]


def test_gate_fails_on_a_stale_report(setup, make_report):
    make_report(example_predicate(created="2020-01-01T00:00:00Z"), "old.json")
    result = _gate(setup, "--json", report="old.json")
    assert result.exit_code == 1
    assert _check(json.loads(result.output)["policy"], "max_age")["verdict"] == "fail"


def test_gate_fails_on_a_missing_measurement(setup, make_report):
    make_report(example_predicate(skipped_stages=True), "partial.json")
    result = _gate(setup, report="partial.json")
    assert result.exit_code == 1
    assert "the attacks stage was skipped: no dataset was given" in result.output


def test_gate_denies_a_report_that_records_a_conversion_mismatch(setup, make_report):
    predicate = example_predicate()
    predicate["conversion"].update(status="mismatch", first_divergent={"node": "conv_3", "op": "Conv"})
    make_report(predicate, "mismatch.json")
    result = _gate(setup, report="mismatch.json")
    assert result.exit_code == 1
    assert "records a conversion mismatch: conversion_mismatch:" in result.output and "conv_3 (Conv)" in result.output
    info = json.loads(_gate(setup, "--json", report="mismatch.json").output)
    assert info["verdict"] == "fail" and info["verification"]["verified"] and info["policy"] is None
    assert info["error"]["code"] == "conversion_mismatch"


def test_gate_denies_unverifiable_reports(setup, make_report):
    data = (setup / "report.json").read_bytes()
    cases = {
        "tampered.json": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "truncated.json": data[: len(data) // 2],
        "unsigned.json": json.dumps({**json.loads(data), "signatures": []}).encode(),
    }
    for name, content in cases.items():
        (setup / name).write_bytes(content)
        result = _gate(setup, "--json", report=name)
        assert result.exit_code == 1, name
        info = json.loads(result.output)
        assert info["verdict"] == "fail" and info["verification"]["verified"] is False
    make_report(example_predicate(), "other.json", model=b"another model")
    result = _gate(setup, report="other.json")
    assert result.exit_code == 1 and "subject_mismatch" in result.output
    (setup / "stranger.pub.pem").write_text(Signer(generate_private_key()).public_pem)
    args = ["gate", str(setup / "report.json"), "--key", str(setup / "stranger.pub.pem"), "--model",
            str(setup / "model.onnx"), "--policy", str(setup / "policy.yaml")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "unknown_key" in result.output


def test_gate_cannot_evaluate_a_bad_policy(setup):
    (setup / "typo.yaml").write_text("min_clean_accuracy: 0.9\nmax_lipshitz_upper: 10\n")
    result = _gate(setup, policy="typo.yaml")
    assert result.exit_code == 2
    assert "error: invalid_policy:" in result.output and "max_lipshitz_upper" in result.output
    info = json.loads(_gate(setup, "--json", policy="typo.yaml").output)
    assert info["error"]["code"] == "invalid_policy"
    (setup / "broken.yaml").write_text("min_clean_accuracy: [0.9\n")
    assert _gate(setup, policy="broken.yaml").exit_code == 2
    assert _gate(setup, policy="absent.yaml").exit_code == 2
    (setup / "empty.yaml").write_text("")
    assert _gate(setup, policy="empty.yaml").exit_code == 2
    (setup / "twice.yaml").write_text("min_clean_accuracy: 0.99\nmax_age: 7d\nmin_clean_accuracy: 0.5\n")
    twice = _gate(setup, policy="twice.yaml")
    assert twice.exit_code == 2 and "'min_clean_accuracy' is given twice" in twice.output


def test_gate_cannot_evaluate_without_a_usable_key(setup):
    (setup / "bad.pem").write_text("not a key")
    args = ["gate", str(setup / "report.json"), "--key", str(setup / "bad.pem"), "--model", str(setup / "model.onnx"),
            "--policy", str(setup / "policy.yaml")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "error: bad_key:" in result.output


def test_read_policy_from_yaml(tmp_path):
    (tmp_path / "p.yaml").write_text("max_age: 12h\nmin_attacked_accuracy:\n  - {norm: linf, eps: 0.03, min: 0.5}\n")
    assert read_policy(tmp_path / "p.yaml") == {"max_age": "12h",
                                                "min_attacked_accuracy": [{"norm": "linf", "eps": 0.03, "min": 0.5}]}


def test_policy_init_writes_the_commented_example_that_the_gate_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["policy", "init"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "policy.yaml").read_text()
    assert text.count("\n# ") >= 5  # commented
    policy = load_policy(read_policy(str(tmp_path / "policy.yaml")))
    assert policy["required_attack_preset"] == "standard" and policy["require_sanity_checks"] is True
    again = runner.invoke(main, ["policy", "init"])
    assert again.exit_code == 2 and "error: file_exists: policy.yaml exists" in again.stderr
    assert runner.invoke(main, ["policy", "init", "--force"]).exit_code == 0
    assert runner.invoke(main, ["policy", "init", "-"]).output == text


def test_gate_fails_closed_on_a_key_the_policy_does_not_pin(setup, signer):
    """The report verifies with the --key given (say, fetched from the compromised server itself), but the policy
    pins another key id: denied. Pinning the right id passes."""
    (setup / "pinned.yaml").write_text(yaml.safe_dump({**PASSING, "trusted_keys": ["ab" * 32]}))
    result = _gate(setup, "--json", policy="pinned.yaml")
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.output)["policy"]["checks"]}
    assert checks["trusted_keys"]["verdict"] == "fail" and checks["trusted_keys"]["value"] == signer.keyid
    (setup / "pinned.yaml").write_text(yaml.safe_dump({**PASSING, "trusted_keys": [signer.keyid]}))
    result = _gate(setup, policy="pinned.yaml")
    assert result.exit_code == 0 and "PASS: all 8 checks passed" in result.output, result.output


def test_trusted_keys_must_be_key_ids():
    with pytest.raises(PolicyError, match="trusted_keys.*64"):
        load_policy({"trusted_keys": ["not-a-key-id"]})
    with pytest.raises(PolicyError, match="trusted_keys"):
        load_policy({"trusted_keys": []})


def test_trusted_keys_is_left_to_the_gate_when_no_signature_is_known():
    """A job evaluates its policy before signing; the key check is the gate's, never a silent pass there."""
    policy = {**PASSING, "trusted_keys": ["ab" * 32]}
    names = [c["name"] for c in evaluate_policy(policy, _predicate(), now=NOW)["checks"]]
    assert "trusted_keys" not in names
    failed = evaluate_policy(policy, _predicate(), now=NOW, keyid="")
    assert failed["verdict"] == "fail"
