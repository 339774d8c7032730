"""The node-by-node conversion check: a wrong node is named, amplified rounding is not blamed on the converter, and
a mismatch stops the pipeline, fails ``lipcert inspect`` and is refused by ``lipcert gate``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from report_example import example_predicate

import certify
from certify.errors import ModelRejected
from certify.pipeline import run_pipeline
from certify.report.policy import conversion_refusal
from certify.verify import verify_conversion


def _model(nodes, inputs, output, initializers, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=[numpy_helper.from_array(v, k)
                                                                          for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return certify.load_onnx(model.SerializeToString())


def small_cnn() -> onnx.ModelProto:
    """conv -> relu -> flatten -> gemm, with seeded weights."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"], transB=1, name="head"),
    ]
    weights = {"cw": rng.normal(size=(4, 2, 3, 3)), "cb": rng.normal(size=4), "gw": rng.normal(size=(5, 64)),
               "gb": rng.normal(size=5)}
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                  helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
                  {k: v.astype(np.float32) for k, v in weights.items()})


def ill_conditioned() -> onnx.ModelProto:
    """The same wide sum computed two ways (MatMul; Mul then ReduceSum), then a softmax over the two, scaled by 1e9.

    Mathematically the two logits are equal and the softmax is uniform; in float32 they differ in their last bits,
    differently in each runtime, and the scaled softmax turns that into a difference of 1.
    """
    w = np.random.default_rng(1).normal(size=(1024, 1)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z1"], name="wide_sum"),
        helper.make_node("Mul", ["x", "wt"], ["terms"], name="terms"),
        helper.make_node("ReduceSum", ["terms", "axes"], ["z2"], keepdims=1, name="wide_sum_again"),
        helper.make_node("Concat", ["z1", "z2"], ["z"], axis=1, name="logits"),
        helper.make_node("Mul", ["z", "s"], ["zs"], name="scale"),
        helper.make_node("Softmax", ["zs"], ["y"], axis=1, name="softmax"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
                  {"w": w, "wt": w.T.copy(), "axes": np.array([1], np.int64), "s": np.array(1e9, np.float32)})


def dropout_mask_model() -> bytes:
    """A classifier that reads the mask of an opset-9 Dropout, which the runtimes fill differently at inference
    (onnxruntime: zeros; lipcert: ones, as in the opset-10 definition), so the conversion disagrees at that node."""
    nodes = [
        helper.make_node("Dropout", ["x"], ["kept", "mask"], ratio=0.5, name="dropout"),
        helper.make_node("Add", ["kept", "mask"], ["shifted"], name="use_mask"),
        helper.make_node("Gemm", ["shifted", "w", "b"], ["logits"], transB=1, name="head"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(np.eye(3, 4, dtype=np.float32), "w"),
                                           numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]).SerializeToString()


def test_a_correct_conversion_is_ok():
    model = small_cnn()
    result = verify_conversion(model, certify.to_torch(model))
    assert result["status"] == "ok", result
    assert result["first_divergent"] is None and result["nodes_checked"] == result["nodes"] == 4
    assert result["max_local_error"] < 0.1


def test_a_small_fetch_budget_compares_in_several_onnxruntime_runs_with_the_same_result(monkeypatch):
    """Big models fetch onnxruntime's intermediates a group of nodes at a time (bounded memory)."""
    from certify import verify

    model = small_cnn()
    module = certify.to_torch(model)
    whole = verify_conversion(model, module)
    monkeypatch.setattr(verify, "FETCH_BUDGET_BYTES", 1)  # one group per node
    types = verify._tensor_types(model)
    exposed = {n: types[n] for node in model.graph.node for n in node.output}
    assert verify._chunk_ids(list(module.steps()), exposed, 2)[0] == [0, 1, 2, 3]
    assert verify_conversion(model, module) == whole


@pytest.mark.parametrize(("weight", "node", "op"), [("cw", "conv", "Conv"), ("gw", "head", "Gemm")])
def test_a_corrupted_node_is_named_as_the_first_divergent(weight, node, op):
    model = small_cnn()
    module = certify.to_torch(model)
    with torch.no_grad():
        module.constant(weight)[0] += 0.05  # the first filter / row of weights
    result = verify_conversion(model, module)
    assert result["status"] == "mismatch"
    assert result["first_divergent"]["node"] == node and result["first_divergent"]["op"] == op
    assert result["first_divergent"]["local_error"] > 1


def test_amplified_rounding_is_ill_conditioned_not_a_mismatch():
    model = ill_conditioned()
    result = verify_conversion(model, certify.to_torch(model), batch=16)
    assert result["max_rel_diff"] > 0.5  # the end-to-end outputs really differ
    assert result["status"] == "ill_conditioned", result
    assert result["first_divergent"] is None and result["nodes_checked"] == result["nodes"]
    assert result["amplification"]["node"] == "softmax"
    assert result["amplification"]["input_rel_error"] < 1e-4 < result["amplification"]["output_rel_error"]


def test_the_pipeline_stops_on_a_conversion_mismatch():
    with pytest.raises(ModelRejected) as info:
        run_pipeline(dropout_mask_model(), {"norms": ["l2"], "attacks": "none"})
    assert info.value.code == "conversion_mismatch"
    assert "dropout (Dropout)" in info.value.message and "mask" in info.value.message


def test_inspect_exits_1_on_a_conversion_mismatch(tmp_path):
    path = tmp_path / "mask.onnx"
    path.write_bytes(dropout_mask_model())
    run = [sys.executable, "-m", "certify", "inspect", str(path)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "mismatch" in proc.stdout and proc.stderr.startswith("error: conversion_mismatch: node dropout")
    proc = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    conversion = json.loads(proc.stdout)["conversion"]
    assert conversion["status"] == "mismatch" and conversion["first_divergent"]["node"] == "dropout"


def test_gate_refuses_a_report_that_records_a_mismatch():
    predicate = example_predicate()
    assert conversion_refusal(predicate) is None
    predicate["conversion"].update(status="mismatch", first_divergent={"node": "n7", "op": "Conv"})
    assert "mismatch with onnxruntime at node n7 (Conv)" in conversion_refusal(predicate)
    del predicate["conversion"]["status"]
    assert "predates" in conversion_refusal(predicate)
