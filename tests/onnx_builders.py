"""Tiny ONNX models built by hand for loader and converter tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def single_node_model(node: onnx.NodeProto, inputs, outputs, initializers=(), opset: int = 17, **kw) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", list(inputs), list(outputs), initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def relu_model(opset: int = 17, shape=("N", 4)) -> onnx.ModelProto:
    return single_node_model(
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        opset=opset,
    )


def const_tensor(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def assert_case_passes(case) -> None:
    """Run one onnx backend case through the converter: pass, or skip with the harness's reason."""
    import pytest

    from certify.conformance import run_case

    status, detail = run_case(case)
    if status == "skip":
        pytest.skip(detail)
    assert status == "pass", detail


def shape_bomb_model(factors=(100000, 100000)) -> onnx.ModelProto:
    """``ConstantOfShape(Shape(x) * factors)`` with x of shape [batch, 4]: its size is data-dependent, so onnx's own
    shape inference leaves it unknown."""
    k = numpy_helper.from_array(np.array(factors, np.int64), "k")
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "k"], ["s2"]),
             helper.make_node("ConstantOfShape", ["s2"], ["c"]),
             helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def huge_input_model(shape=("batch", 64, 50_000_000)) -> onnx.ModelProto:
    """A declared input of 12.8 GB at batch 1."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def flatten_mlp(batch=1, seed: int = 0) -> onnx.ModelProto:
    """8x8 images -> Reshape to [batch, 64] -> 16 ReLU -> 10 logits. With an int ``batch`` the graph is exported for
    that batch only (the reshape fails on any other); with ``batch=None`` it takes any batch (Reshape to [-1, 64])."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(16, 64)).astype(np.float32) / 8
    w2 = rng.normal(size=(10, 16)).astype(np.float32) / 4
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([batch or -1, 64], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    first = batch or "batch"
    graph = helper.make_graph(nodes, "flatten_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [first, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
