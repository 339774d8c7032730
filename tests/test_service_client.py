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
    """A job that runs past its time budget part-way: the bar must stop where the job did, not draw 100%."""
    import io
    import sys

    from certify.cli.client import ApiClient

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes())
    env = {"LIPCERT_URL": service.base_url, "LIPCERT_TOKEN": TOKENS["slow"]}  # sleeps at every progress point
    r = CliRunner().invoke(main, ["submit", str(model), "--attacks", "none", "--time-budget", "2", "--json"], env=env)
    assert r.exit_code == 0, r.output
    job_id = json.loads(r.stdout)["id"]
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    job = ApiClient(service.base_url, TOKENS["slow"]).wait(job_id, interval=0.1)
    assert job["state"] == "failed" and 0 < job["progress"] < 1, job
    drawn = terminal.getvalue()
    assert "%|" in drawn and "100%" not in drawn, drawn
    assert f"{round(100 * job['progress']):3d}%" in drawn.rsplit("\r", 1)[-1]


def test_data_outside_the_declared_range_is_refused_when_the_job_is_created(service, tmp_path):
    import numpy as np

    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes())
    data = tmp_path / "pixels.npz"
    np.savez(data, x=np.full((4, 4), 200.0, np.float32), y=np.zeros(4, np.int64))
    runner = CliRunner()
    r = runner.invoke(main, ["submit", str(model), "--data", str(data), "--attacks", "none"], env=_env(service))
    assert r.exit_code == 2 and "error: input_out_of_range: x spans [200, 200]" in r.output, r.output
    r = runner.invoke(main, ["submit", str(model), "--data", str(data), "--attacks", "none", "--input-range", "0,255",
                             "--scale", "1/255", "--wait", "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["state"] == "succeeded"


def test_the_worker_records_an_eta_that_does_not_rise_near_the_end(service):
    """The progress records of the issue's case: quick load/convert/bounds, then long attacks."""
    import redis

    from certify.progress import Eta
    from service.core.records import Records
    from worker.execution import _Progress

    records = Records(redis.Redis.from_url(service.env["REDIS_URL"], decode_responses=True))
    job = {"id": "job_eta_unit", "tenant": "alice", "state": "running", "created_at": 0}
    records.update_job(job["id"], state="running")
    progress = _Progress(records, job)
    clock = [0.0]
    progress.eta = Eta(clock=lambda: clock[0])
    timeline = [("load", 1.0, 0.2), ("convert", 1.0, 0.1), ("conversion_check", 1.0, 0.2), ("bounds", 0.5, 1.0),
                ("bounds", 1.0, 1.0), ("certified", 1.0, 0.1)]
    timeline += [("attacks", k / 10, 3.0) for k in range(1, 11)] + [("report", 1.0, 2.0)]
    seen = []
    for stage, fraction, seconds in timeline:
        clock[0] += seconds
        progress(stage, fraction, "")
        record = records.get_job(job["id"])
        seen.append((record["progress"], record["eta_s"]))
    late = [eta for p, eta in seen if p >= 0.5 and eta is not None]
    assert late and all(b <= a for a, b in zip(late, late[1:])), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


def test_submit_uploads_its_properties_and_names_them_by_id(service, tmp_path):
    """``lipcert submit --property`` uploads each file to /v1/properties and the job names it by id, so a file
    larger than a whole job request (256 KiB) is decided too."""
    import numpy as np
    from test_properties import DATA, robustness_property

    from service.api.jobs import MAX_JOB_BODY

    data = np.load(DATA)
    text = robustness_property(data["x"][2].astype(np.float64), int(data["y"][2]), 0.001)
    padded = text + "".join(f"; {'padding ' * 12}{i}\n" for i in range(MAX_JOB_BODY // 100 + 1))
    prop = tmp_path / "large.vnnlib"
    prop.write_text(padded)
    assert len(padded) > MAX_JOB_BODY
    model = tmp_path / "digits_mlp.onnx"
    model.write_bytes(open("examples/digits_mlp.onnx", "rb").read())
    r = CliRunner().invoke(main, ["submit", str(model), "--samples", "2", "--attacks", "none", "--property", str(prop),
                                  "--property-timeout", "20", "--wait", "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    (entry,) = job["config"]["properties"]
    assert entry["name"] == "large" and entry["property_id"].startswith("sha256:") and "vnnlib" not in entry
    assert job["state"] == "succeeded", job
