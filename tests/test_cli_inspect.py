"""``lipcert inspect`` as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.onnx_builders import relu_model, shape_bomb_model


def lipcert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "certify", *args], capture_output=True, text=True, timeout=120)


def test_inspect_example_json(example_model_path):
    proc = lipcert("inspect", example_model_path, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["operators"] == {"Gemm": 3, "Relu": 2}
    assert summary["parameters"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert summary["inputs"] == [{"name": "x", "shape": ["batch", 64], "dtype": "float"}]
    assert summary["conversion"]["max_rel_diff"] < 1e-5


def test_inspect_example_text(example_model_path):
    proc = lipcert("inspect", example_model_path)
    assert proc.returncode == 0, proc.stderr
    assert "Gemm x3" in proc.stdout and "max_rel_diff" in proc.stdout


def test_rejected_model_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    proc = lipcert("inspect", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: not_onnx: ")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_rejected_model_json_error(tmp_path):
    path = tmp_path / "dyn.onnx"
    path.write_bytes(relu_model(shape=("N", "F")).SerializeToString())
    proc = lipcert("inspect", str(path), "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "dynamic_dimension"
    ok = lipcert("inspect", str(path), "--json", "--input-shape", "x=1,5")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["inputs"][0]["shape"] == [1, 5]


def test_bad_arguments_exit_2(example_model_path, tmp_path):
    proc = lipcert("inspect", example_model_path, "--input-shape", "nonsense")
    assert proc.returncode == 2 and "error: bad_argument" in proc.stderr
    proc = lipcert("inspect", example_model_path, "--input-range", "1,0")
    assert proc.returncode == 2 and "LO must be below HI" in proc.stderr
    proc = lipcert("inspect", str(tmp_path / "missing.onnx"))
    assert proc.returncode == 2 and "error: file_not_found" in proc.stderr


def test_data_dependent_huge_allocation_exits_2(tmp_path):
    path = tmp_path / "bomb.onnx"
    path.write_bytes(shape_bomb_model().SerializeToString())
    proc = lipcert("inspect", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: allocation_too_large: tensor 'c'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
