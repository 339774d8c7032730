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


def test_a_failed_job_leaves_its_bar_where_it_stopped(service, tmp_path, monkeypatch):
    """Raw pixels against the default [0, 1] range: the worker refuses the data, and the bar must not say 100%."""
    import io
    import sys

    import numpy as np

    from certify.cli.client import ApiClient

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes())
    data = tmp_path / "pixels.npz"
    np.savez(data, x=np.full((4, 4), 200.0, np.float32), y=np.zeros(4, np.int64))
    r = CliRunner().invoke(main, ["submit", str(model), "--data", str(data), "--attacks", "none", "--json"],
                           env=_env(service))
    assert r.exit_code == 0, r.output
    job_id = json.loads(r.stdout)["id"]
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    job = ApiClient(service.base_url, TOKENS["alice"]).wait(job_id, interval=0.1)
    assert job["state"] == "failed" and job["error"]["code"] == "input_out_of_range"
    drawn = terminal.getvalue()
    assert "%|" in drawn and "100%" not in drawn, drawn
    assert f"{round(100 * job['progress']):3d}%" in drawn.rsplit("\r", 1)[-1]
