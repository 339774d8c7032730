"""``lipcert submit`` / ``status`` / ``report`` against the running test service."""

from __future__ import annotations

import json

from click.testing import CliRunner
from service_fixtures import TOKENS, tiny_model_bytes

from certify.cli import main


def _env(service, who: str = "alice") -> dict:
    return {"LIPCERT_URL": service.base_url, "LIPCERT_TOKEN": TOKENS[who]}


def test_submit_wait_status_and_report(service, tmp_path):
    from certify.report.dsse import open_envelope, read_envelope
    from certify.report.keys import load_public_key

    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes())
    runner = CliRunner()
    r = runner.invoke(main, ["submit", str(model), "--eps", "0.05", "--samples", "2", "--attacks", "none", "--wait",
                             "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["state"] == "succeeded"

    r = runner.invoke(main, ["status", job["id"]], env=_env(service))
    assert r.exit_code == 0 and job["id"] in r.stdout and "succeeded" in r.stdout

    out = tmp_path / "report.json"
    r = runner.invoke(main, ["report", job["id"], "-o", str(out)], env=_env(service))
    assert r.exit_code == 0, r.output
    keys = [load_public_key(k["public_pem"]) for k in service.session().get(service.url("/v1/keys")).json()["keys"]]
    statement, _ = open_envelope(read_envelope(str(out)), keys)
    assert statement["subject"][0]["name"] == "tiny.onnx"


def test_client_errors_exit_2(service, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["status", "job_nonexistent"], env=_env(service))
    assert r.exit_code == 2 and "error: not_found:" in r.output
    r = runner.invoke(main, ["status", "job_nonexistent"], env=dict(_env(service), LIPCERT_TOKEN="wrong-token"))
    assert r.exit_code == 2 and "error: invalid_token:" in r.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = runner.invoke(main, ["submit", str(bad)], env=_env(service))
    assert r.exit_code == 2 and "error: " in r.output
