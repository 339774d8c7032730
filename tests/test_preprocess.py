"""Input preprocessing prepended to the graph: the model sees normalised inputs, eps is in raw units, the bounds
include the normalisation, and data outside the declared range is refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from certify.cli import main
from certify.errors import ModelRejected
from certify.load import load_onnx
from certify.pipeline import run_pipeline
from certify.preprocess import apply, describe

EXAMPLE_MODEL = "examples/digits_mlp.onnx"
EXAMPLE_DATA = "examples/digits_test.npz"


def _conv_model() -> onnx.ModelProto:
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 3, 1, 1], np.arange(6, dtype=np.float32).tolist())
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 4, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_prepended_nodes_normalise_per_channel_before_the_model():
    spec = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    original = load_onnx(_conv_model().SerializeToString())
    composed = apply(original, spec)
    assert [n.op_type for n in composed.graph.node[:3]] == ["Mul", "Sub", "Div"]
    assert composed.graph.input[0].name == "x"
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 4, 4)).astype(np.float32)
    mean = np.asarray(spec["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(3, 1, 1)
    expected = _run(original, ((x * np.float32(spec["scale"]) - mean) / std).astype(np.float32))
    assert np.allclose(_run(composed, x), expected, rtol=1e-5, atol=1e-4)


def _channels_last_model() -> onnx.ModelProto:
    """A Gemm over the last axis of an NHWC input: the channels are on the last axis."""
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [3, 2], np.arange(6, dtype=np.float32).tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 4, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 4, 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_channels_last_inputs_normalise_their_last_axis():
    spec = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_axis": -1}
    original = load_onnx(_channels_last_model().SerializeToString())
    with pytest.raises(ModelRejected) as info:
        apply(original, dict(spec, channel_axis=1))
    assert info.value.code == "invalid_config" and "channel_axis -1" in info.value.message
    composed = apply(original, spec)
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    expected = _run(original, ((x * np.float32(spec["scale"]) - mean) / std).astype(np.float32))
    assert np.allclose(_run(composed, x), expected, rtol=1e-5, atol=1e-4)


def test_channels_last_option_reaches_the_configuration(tmp_path):
    path = tmp_path / "nhwc.onnx"
    onnx.save(_channels_last_model(), path)
    runner = CliRunner()
    args = ["bounds", str(path), "--json", "--quiet", "--mean", "0.5,0.5,0.5"]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 2 and "--channels-last" in refused.output
    ok = runner.invoke(main, args + ["--channels-last"])
    assert ok.exit_code == 0, ok.output
    alone = runner.invoke(main, ["bounds", str(path), "--channels-last"])
    assert alone.exit_code == 2 and "--channels-last needs --mean or --std" in alone.output


@pytest.mark.parametrize(("spec", "message"), [
    ({"scale": 1.0, "mean": [0.1, 0.2], "std": [1.0]}, "mean has 2 values"),
    ({"scale": 1.0, "mean": [0.0], "std": [1.0, 2.0, 3.0, 4.0]}, "std has 4 values"),
])
def test_a_spec_that_does_not_fit_the_input_is_refused(spec, message):
    with pytest.raises(ModelRejected) as info:
        apply(load_onnx(_conv_model().SerializeToString()), spec)
    assert info.value.code == "invalid_config" and message in info.value.message


def test_bounds_include_the_normalisation_and_eps_is_in_pixels():
    runner = CliRunner()
    base = runner.invoke(main, ["bounds", EXAMPLE_MODEL, "--json", "--quiet"])
    scaled = runner.invoke(main, ["bounds", EXAMPLE_MODEL, "--json", "--quiet", "--scale", "1/255",
                                  "--input-range", "0,255"])
    assert base.exit_code == 0 and scaled.exit_code == 0, scaled.output
    upper, upper_px = json.loads(base.stdout)["network"]["upper"], json.loads(scaled.stdout)["network"]["upper"]
    assert upper_px == pytest.approx(upper / 255, rel=1e-6) and upper_px >= upper / 255 * (1 - 1e-12)


def test_pipeline_in_pixel_units_matches_the_unit_pipeline(tmp_path):
    data = np.load(EXAMPLE_DATA)
    pixels = tmp_path / "pixels.npz"
    np.savez(pixels, x=(data["x"] * 255).astype(np.float32), y=data["y"])
    cfg = {"attacks": "none", "samples": 60, "epsilons": [0.1]}
    unit = run_pipeline(EXAMPLE_MODEL, cfg, dataset=EXAMPLE_DATA).statement["predicate"]
    px_cfg = dict(cfg, epsilons=[25.5], input_range=[0, 255], preprocessing={"scale": 1 / 255})
    px = run_pipeline(EXAMPLE_MODEL, px_cfg, dataset=str(pixels)).statement["predicate"]
    assert px["certified"]["accuracy"]["l2"]["25.5"] == unit["certified"]["accuracy"]["l2"]["0.1"]
    assert px["input"]["eps_space"] == "raw_input" and px["input"]["range"] == [0, 255]
    assert px["input"]["preprocessing"] == {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    assert unit["input"] == describe(None, (0.0, 1.0)) and unit["input"]["eps_space"] == "model_input"
    from certify.report.html import render_report_html
    from certify.report.render import render_report
    from certify.report.statement import build_statement

    statement = build_statement(model_name="m.onnx", model_sha256="ab" * 32, predicate=px)
    assert "eps space     eps is in raw input units (x in [0, 255])" in render_report(statement, "not verified")
    assert "eps is in raw input units" in render_report_html(statement)
    with pytest.raises(ModelRejected) as info:
        run_pipeline(EXAMPLE_MODEL, cfg, dataset=str(pixels))
    assert info.value.code == "input_out_of_range" and "x spans [0, 255]" in info.value.message


def test_cli_refuses_pixels_against_the_default_range(tmp_path):
    data = np.load(EXAMPLE_DATA)
    pixels = tmp_path / "pixels.npz"
    np.savez(pixels, x=(data["x"] * 255).astype(np.float32), y=data["y"])
    r = CliRunner().invoke(main, ["certify", EXAMPLE_MODEL, "--data", str(pixels), "--attacks", "none", "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: input_out_of_range: x spans [0, 255]"), r.output
    r = CliRunner().invoke(main, ["certify", EXAMPLE_MODEL, "--std", "0", "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: bad_argument: --scale and --std must be positive")
