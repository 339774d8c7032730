"""Units versus random directions (Szegedy et al. 2013): constructed models where units must, and must not, win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from certify.cli import main
from certify.convert import to_torch
from certify.errors import ModelRejected
from certify.units import mean_pairwise_cosine, permutation_test, purity, units_vs_random
from tests.onnx_builders import const_tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "examples", "digits_test.npz")
COPIES = 3  # detectors per class


def _digits():
    data = np.load(DIGITS)
    return data["x"], data["y"]


def _model(rotation: np.ndarray | None) -> onnx.ModelProto:
    """64 -> ReLU(templates . x - offset) -> [rotation] -> 10: each hidden unit detects one digit class.

    The templates are class means of disjoint thirds of the data, centred; with ``rotation`` the node is a random
    orthogonal mix of those detectors, whose units are then as arbitrary as random directions."""
    x, y = _digits()
    templates = np.stack([x[(y == c)][i::COPIES].mean(0) for c in range(10) for i in range(COPIES)])
    templates -= x.mean(0)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    width = len(templates)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["hidden"])]
    inits = [const_tensor("w1", templates.astype(np.float32)), const_tensor("b1", np.zeros(width, np.float32))]
    readout = np.kron(np.eye(10), np.ones((1, COPIES))).astype(np.float32)  # (10, width)
    last = "hidden"
    if rotation is not None:
        nodes.append(helper.make_node("Gemm", ["hidden", "rot"], ["mixed"], transB=1))
        inits.append(const_tensor("rot", rotation.astype(np.float32)))
        readout = (readout @ rotation.T).astype(np.float32)
        last = "mixed"
    nodes.append(helper.make_node("Gemm", [last, "w2"], ["logits"], transB=1))
    inits.append(const_tensor("w2", readout))
    graph = helper.make_graph(nodes, "detectors", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rotation(width: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, width)))
    return q * np.sign(np.diag(r))


def test_detector_units_beat_random_directions():
    x, y = _digits()
    result = units_vs_random(to_torch(_model(None)), x, y, directions=16, top_n=8, seed=0)
    print(result.purity, result.cosine)
    assert result.node == "hidden" and result.width == 10 * COPIES
    assert result.purity.unit_mean > result.purity.random_mean + 0.1
    assert result.purity.p_value < 0.01


def test_rotated_detectors_are_no_better_than_random():
    x, y = _digits()
    result = units_vs_random(to_torch(_model(_rotation(10 * COPIES, 1))), x, y, directions=16, top_n=8, seed=0)
    print(result.purity, result.cosine)
    assert result.node == "mixed"
    assert result.purity.p_value > 0.05 and result.cosine.p_value > 0.05


def test_coherence_measures_and_permutation_test():
    assert purity(np.array([3, 3, 1, 3])) == 0.75
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])) == pytest.approx(1 / 3)
    same = permutation_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], 500, 0)
    assert same.difference == 0 and same.p_value == 1.0
    apart = permutation_test([1.0] * 8, [0.0] * 8, 2000, 0)
    assert apart.p_value < 0.001 and apart.unit_mean == 1.0 and apart.random_mean == 0.0


def test_streaming_in_small_batches_finds_the_same_top_inputs():
    x, y = _digits()
    graph = to_torch(_model(_rotation(10 * COPIES, 1)))
    whole = units_vs_random(graph, x, y, directions=4, top_n=5, seed=3, unit_choice="random", permutations=200)
    small = units_vs_random(graph, x, y, directions=4, top_n=5, seed=3, unit_choice="random", permutations=200,
                            batch_size=7)
    assert [d.top for d in whole.directions] == [d.top for d in small.directions]
    assert [d.cosine for d in whole.directions] == pytest.approx([d.cosine for d in small.directions])


def test_unknown_node_lists_the_candidates():
    x, y = _digits()
    with pytest.raises(ModelRejected) as e:
        units_vs_random(to_torch(_model(None)), x, y, node="nope")
    assert e.value.code == "unknown_node" and "hidden" in e.value.message


def _cli(*args):
    """The real command, in-process (a subprocess pays the torch import on every call); exit codes as in a shell."""
    done = CliRunner().invoke(main, ["units", *args])
    done.returncode = done.exit_code
    return done


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "certify", "units", os.path.join(ROOT, "examples", "digits_mlp.onnx"),
                           "--data", DIGITS, "--node", "nope"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: unknown_node: ") and "/3/Relu_output_0" in done.stderr


def test_cli_prints_the_comparison_and_json(tmp_path):
    model = tmp_path / "detectors.onnx"
    onnx.save(_model(None), model)
    table = _cli(str(model), "--data", DIGITS, "--directions", "4", "--top", "4", "--permutations", "200")
    assert table.returncode == 0, table.stderr
    assert "purity" in table.stdout and "unit " in table.stdout and "random" in table.stdout
    as_json = _cli(str(model), "--data", DIGITS, "--directions", "4", "--json", "--permutations", "200")
    result = json.loads(as_json.stdout)
    assert result["node"] == "hidden" and len(result["directions"]) == 8 and len(result["directions"][0]["top"]) == 8


@pytest.mark.parametrize("args, code", [
    (["--node", "nope"], "unknown_node"),
    (["--top", "1000"], "bad_argument"),
])
def test_cli_refuses_bad_input_with_exit_2(tmp_path, args, code):
    model = tmp_path / "detectors.onnx"
    onnx.save(_model(None), model)
    done = _cli(str(model), "--data", DIGITS, *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {code}: ") and "Traceback" not in done.stderr


def test_cli_refuses_a_dataset_of_the_wrong_shape(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    done = _cli(os.path.join(ROOT, "examples", "digits_mlp.onnx"), "--data", str(bad))
    assert done.returncode == 2 and done.stderr.startswith("error: dataset_model_mismatch: ")


def test_pipeline_stage_writes_a_schema_valid_section_rendered_in_text_and_html():
    from certify.pipeline import run_pipeline
    from certify.report.html import render_report_html
    from certify.report.render import render_report
    from certify.report.schema import validate_predicate

    config = {"norms": ["l2"], "epsilons": [0.1], "samples": 120, "attacks": "none", "analyses": ["units"]}
    ticks = []
    result = run_pipeline(os.path.join(ROOT, "examples", "digits_mlp.onnx"), config, dataset=DIGITS,
                          progress=lambda stage, fraction, message: ticks.append((stage, fraction)))
    assert [f for s, f in ticks if s == "units"][1:-1] == sorted(f for s, f in ticks if s == "units")[1:-1]
    assert len([s for s, _ in ticks if s == "units"]) >= 4  # start, per batch of each pass, end
    p = result.statement["predicate"]
    assert validate_predicate(p) == []
    units = p["analyses"]["units"]
    assert units["node"] == "/3/Relu_output_0" and units["samples"] == 120
    assert 0 <= units["purity"]["p_value"] <= 1 and len(units["directions"]) == 32
    assert [s["stage"] for s in result.stages][-2:] == ["units", "report"]
    assert "Units versus random directions" in render_report(result.statement, "NOT VERIFIED")
    page = render_report_html(result.statement)
    assert 'id="units"' in page and page.count("<img") >= 32 * 8 and "<circle" in page


def test_units_section_is_absent_unless_asked_and_unknown_analyses_are_refused():
    from certify.pipeline import run_pipeline

    p = run_pipeline(os.path.join(ROOT, "examples", "digits_mlp.onnx"), {"attacks": "none", "samples": 20},
                     dataset=DIGITS).statement["predicate"]
    assert "analyses" not in p
    with pytest.raises(ModelRejected) as e:
        run_pipeline(os.path.join(ROOT, "examples", "digits_mlp.onnx"), {"analyses": ["saliency"]})
    assert e.value.code == "invalid_config" and "unknown analysis 'saliency'" in e.value.message


def test_certify_command_takes_the_analysis_and_refuses_unknown_ones(tmp_path):
    model = os.path.join(ROOT, "examples", "digits_mlp.onnx")
    out = tmp_path / "report.json"
    done = CliRunner().invoke(main, ["certify", model, "--data", DIGITS, "--samples", "40", "--attacks", "none",
                                     "--analysis", "units", "-q", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["predicate"]["analyses"]["units"]["samples"] == 40
    bad = CliRunner().invoke(main, ["certify", model, "--analysis", "saliency", "-q"])
    assert bad.exit_code == 2 and "error: invalid_config: analyses: unknown analysis 'saliency'" in bad.stderr


def test_the_service_job_request_accepts_the_analysis_and_refuses_unknown_ones():
    from marshmallow import ValidationError

    from service.schemas import JobCreateSchema

    digest = "sha256:" + "0" * 64
    assert JobCreateSchema().load({"model": digest, "analyses": ["units"]})["analyses"] == ["units"]
    assert JobCreateSchema().load({"model": digest})["analyses"] == []
    with pytest.raises(ValidationError) as e:
        JobCreateSchema().load({"model": digest, "analyses": ["saliency"]})
    assert "unknown analysis 'saliency'" in str(e.value.messages["analyses"])
