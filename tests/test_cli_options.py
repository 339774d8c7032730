"""Options shared by certify, bounds and submit: both eps forms, case-insensitive norms, one set of defaults,
refusals before torch is imported, and a loud warning when a job has no dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from service_fixtures import TOKENS, tiny_model_bytes

from certify.cli import main
from certify.config import DEFAULTS, NO_DATASET_WARNING

EXAMPLE_MODEL = "examples/digits_mlp.onnx"

NO_TORCH = ("import atexit, sys\n"
            "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch'))\n"
            "from certify.cli import main\nmain(sys.argv[1:])\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["certify", EXAMPLE_MODEL, "--norm", "L3"], "error: bad_argument: --norm l3: one of l2, linf"),
    (["certify", EXAMPLE_MODEL, "--eps", "0.1,x"], "error: bad_argument: --eps '0.1,x'"),
    (["certify", EXAMPLE_MODEL, "--eps", "-1"], "every radius must be a positive number"),
    (["certify", EXAMPLE_MODEL, "--input-range", "1,0"], "error: bad_argument: --input-range '1,0'"),
    (["certify", EXAMPLE_MODEL, "--input-range", "0"], "error: bad_argument: --input-range '0': expected LO HI"),
    (["bounds", EXAMPLE_MODEL, "--input-range", "x", "1"], "error: bad_argument: --input-range 'x,1'"),
    (["submit", EXAMPLE_MODEL, "--input-range", "2", "-2"], "error: bad_argument: --input-range '2,-2': LO must"),
    (["certify", EXAMPLE_MODEL, "--attacks", "hardest"], "error: invalid_config: attacks: unknown preset"),
    (["bounds", EXAMPLE_MODEL, "--norm", "l2,linf"], "error: bad_argument: --norm 'l2,linf': this command takes one"),
    (["submit", EXAMPLE_MODEL, "--norm", "L1"], "error: bad_argument: --norm l1"),
    (["submit", EXAMPLE_MODEL, "--samples", "0"], "error: invalid_config: samples"),
    (["submit", EXAMPLE_MODEL, "--certifiers", "crown,magic"], "error: bad_argument: --certifiers magic: one of"),
    (["bounds", EXAMPLE_MODEL, "--certifiers", "CROWN,x"], "error: bad_argument: --certifiers x"),
])
def test_bad_options_are_refused_before_torch_is_imported(argv, message):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout.strip() == "no torch"


@pytest.mark.parametrize("argv", [["--input-range", "0.5", "1"], ["--input-range", "0.5,1"],
                                  ["--input-range=0.5", "1"], ["--input-range", "5e-1", "1", "--norm", "linf"]])
def test_input_range_takes_lo_hi_or_lo_comma_hi(argv):
    r = CliRunner().invoke(main, ["bounds", EXAMPLE_MODEL, "--data", "examples/digits_test.npz", *argv])
    assert r.exit_code == 2 and r.stderr.startswith("error: input_out_of_range: x spans [0, 1], outside the "
                                                    "declared input range [0.5, 1]"), r.output


def test_input_range_takes_negative_numbers():
    r = CliRunner().invoke(main, ["bounds", EXAMPLE_MODEL, "--input-range", "-1", "1", "--data",
                                  "examples/digits_test.npz", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["certified"]


def _env(service) -> dict:
    return {"LIPCERT_URL": service.base_url, "LIPCERT_TOKEN": TOKENS["alice"]}


def test_submit_takes_both_eps_forms_and_shares_certify_defaults(service, tmp_path):
    from certify.config import load_config

    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes())
    runner = CliRunner()
    r = runner.invoke(main, ["submit", str(model), "--eps", "0.05,0.1", "--eps", "0.2", "--norm", "L2,linf",
                             "--attacks", "none", "--certifiers", "global,crown", "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["config"]["epsilons"] == [0.05, 0.1, 0.2] and job["config"]["norms"] == ["l2", "linf"]
    assert job["config"]["certifiers"] == ["global", "crown"]
    assert job["model_name"] == "tiny.onnx"
    assert job["warnings"] == [NO_DATASET_WARNING]

    r = runner.invoke(main, ["submit", str(model), "--scale", "1/255", "--input-range", "0,255", "--mean", "0.5",
                             "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    config = json.loads(r.stdout)["config"]
    assert config["preprocessing"] == {"scale": 1 / 255, "mean": [0.5], "std": [1.0]}
    assert config["input_range"] == [0.0, 255.0]
    bad = service.session().post(service.url("/v1/jobs"), json={"model": job["model"],
                                                                 "preprocessing": {"std": [0.0]}})
    assert bad.status_code == 400 and "preprocessing" in bad.json()["errors"]

    r = runner.invoke(main, ["submit", str(model), "--json"], env=_env(service))
    assert r.exit_code == 0, r.output
    config = json.loads(r.stdout)["config"]
    defaults = load_config({})
    for key in ("norms", "epsilons", "attacks", "input_range", "samples", "seed", "certifiers"):
        assert config[key] == defaults[key] == (list(DEFAULTS[key]) if isinstance(DEFAULTS[key], tuple)
                                                else DEFAULTS[key]), key


def test_certify_without_data_warns_on_stderr_and_in_the_report(tmp_path):
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["certify", EXAMPLE_MODEL, "--attacks", "none", "--quiet", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"warning: {NO_DATASET_WARNING}" in r.stderr
    assert "[load]" not in r.stderr  # --quiet
    predicate = json.loads(out.read_text())["predicate"]
    assert predicate["warnings"] == [NO_DATASET_WARNING]
    assert "WARNING       no dataset was given" in r.stdout


@pytest.mark.parametrize("env", [{"LIPCERT_TOKENS": "alice:short"}, {"LIPCERT_RATE_LIMIT": "many"},
                                 {"LIPCERT_SIGNING_KEY": "/nonexistent/key.pem"}])
def test_serve_refuses_a_bad_configuration_in_one_line(tmp_path, env):
    import os

    proc = subprocess.run([sys.executable, "-m", "certify", "serve", "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: invalid_config: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "data" / "redis").exists()  # refused before anything started


@pytest.mark.parametrize("env", [{"LIPCERT_WORKER_NICE": "42"}, {"LIPCERT_RATE_LIMIT": "many"}])
def test_worker_refuses_a_bad_configuration_in_one_line(env):
    import os

    proc = subprocess.run([sys.executable, "-m", "certify", "worker", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: invalid_config: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_the_printed_submit_hint_names_lipcert_by_full_path():
    import os

    from service.commands import _lipcert_command

    command = _lipcert_command()
    executable = command.split(" ")[0]
    assert os.path.isabs(executable) and os.access(executable, os.X_OK), command


def test_the_service_commands_join_lipcert_through_its_entry_points():
    """serve, api and worker live in the service and reach ``lipcert`` by the ``lipcert.commands`` entry points."""
    import click

    ctx = click.Context(main)
    for name in ("serve", "api", "worker"):
        command = main.get_command(ctx, name)
        assert command is not None, f"no `lipcert {name}`: refresh the entry points (make install, pip install -e .)"
        assert command.callback.__module__ == "service.commands" and name in main.list_commands(ctx)


def test_bounds_takes_the_lower_bound_and_chain_budgets():
    r = CliRunner().invoke(main, ["bounds", EXAMPLE_MODEL, "--json", "--lower-budget", "0.5", "--chain-budget", "0"])
    assert r.exit_code == 0, r.output
    network = json.loads(r.stdout)["network"]
    assert network["lower_method"]["budget_s"] == 0.5
    assert network["chains_skipped"] >= 1 and network["upper"] == network["product"]  # every chain left to the product
    bad = CliRunner().invoke(main, ["bounds", EXAMPLE_MODEL, "--lower-budget", "-1"])
    assert bad.exit_code == 2 and "--lower-budget" in bad.output
