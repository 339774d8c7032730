"""Every refusal of the safe loader: the stable code, a clear message, and no crash."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from certify import Limits, ModelRejected, load_onnx
from tests.onnx_builders import const_tensor, huge_input_model, relu_model, shape_bomb_model, single_node_model


def rejected(source, **kw) -> ModelRejected:
    with pytest.raises(ModelRejected) as info:
        load_onnx(source, **kw)
    assert info.value.message
    return info.value


def test_accepts_example_model(example_model_path, example_model_bytes):
    for source in (example_model_path, example_model_bytes):
        model = load_onnx(source)
        assert [i.name for i in model.graph.input] == ["x"]
        assert model.graph.value_info, "shape inference ran"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert rejected(str(path)).code == "empty_file"
    assert rejected(b"").code == "empty_file"


def test_random_bytes():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert rejected(data).code == "not_onnx"


def test_truncated_model(example_model_bytes):
    assert rejected(example_model_bytes[: len(example_model_bytes) // 2]).code == "not_onnx"


def test_model_without_graph():
    model = onnx.ModelProto(ir_version=8)
    model.opset_import.add(domain="", version=17)
    assert rejected(model.SerializeToString()).code == "no_graph"


def test_missing_file(tmp_path):
    assert rejected(str(tmp_path / "nope.onnx")).code == "file_not_found"


def test_file_over_cap_is_refused_before_reading(tmp_path, example_model_bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(example_model_bytes)
    err = rejected(str(path), limits=Limits(max_file_bytes=1000))
    assert err.code == "file_too_large"
    assert rejected(example_model_bytes, limits=Limits(max_file_bytes=1000)).code == "file_too_large"


def _with_external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def test_external_data_path_traversal_in_initializer():
    w = _with_external(const_tensor("w", np.ones((4, 4), np.float32)), "../../../../etc/passwd")
    model = single_node_model(
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializers=[w],
    )
    err = rejected(model.SerializeToString())
    assert err.code == "external_data"
    assert "etc/passwd" in err.message


def test_external_data_in_constant_attribute():
    t = _with_external(const_tensor("c", np.ones(4, np.float32)), "weights.bin")
    model = single_node_model(
        helper.make_node("Constant", [], ["y"], value=t),
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    assert rejected(model.SerializeToString()).code == "external_data"


def test_external_data_inside_if_subgraph():
    t = _with_external(const_tensor("c", np.ones(4, np.float32)), "weights.bin")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=t)], "branch", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    model = single_node_model(
        node, [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    assert rejected(model.SerializeToString()).code == "external_data"


def test_subgraph_depth_is_capped():
    inner = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=const_tensor("c", np.ones(1, np.float32)))], "leaf", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    for depth in range(5):
        node = helper.make_node("If", ["cond"], ["b"], then_branch=inner, else_branch=inner)
        out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
        inner = helper.make_graph([node], f"level{depth}", [], [out])
    model = single_node_model(
        inner.node[0], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    assert rejected(model.SerializeToString()).code == "subgraph_too_deep"


def test_custom_domain_node_is_refused():
    model = single_node_model(
        helper.make_node("Evil", ["x"], ["y"], domain="com.example"),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.checker.check_model(model, full_check=True)  # the checker alone lets it through
    err = rejected(model.SerializeToString())
    assert err.code == "custom_domain"
    assert "com.example.Evil (1 node)" in err.message


def test_every_unsupported_operator_is_listed_at_once():
    nodes = [
        helper.make_node("Det", ["x"], ["a"]),
        helper.make_node("Relu", ["x"], ["b"]),
        helper.make_node("Einsum", ["x", "x"], ["c"], equation="ij,jk->ik"),
        helper.make_node("Einsum", ["x", "x"], ["d"], equation="ij,jk->ik"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip("abcd", ([], [3, 3], [3, 3], [3, 3]))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    err = rejected(model.SerializeToString())
    assert err.code == "unsupported_operator"
    assert err.message == "Unsupported operators: Det (1 node), Einsum (2 nodes)"
    assert load_onnx(model.SerializeToString(), require_supported=False) is not None


def test_oversized_allocation_refused_before_allocating():
    shape = const_tensor("shape", np.array([1_000_000, 1_000_000], np.int64))
    model = single_node_model(
        helper.make_node("ConstantOfShape", ["shape"], ["y"]),
        [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])], initializers=[shape],
    )
    err = rejected(model.SerializeToString())
    assert err.code == "allocation_too_large"
    assert "1000000" in err.message


def test_data_dependent_allocation_is_refused_naming_the_tensor():
    """onnx's data propagation leaves Shape(x) * [100000, 100000] unknown; the loader evaluates it at batch 1."""
    err = rejected(shape_bomb_model().SerializeToString())
    assert err.code == "allocation_too_large"
    assert "'c'" in err.message and "[100000, 400000]" in err.message


def test_small_shape_arithmetic_loads_and_the_model_keeps_its_nodes():
    model = load_onnx(shape_bomb_model((3, 5)).SerializeToString())
    assert [n.op_type for n in model.graph.node] == ["Shape", "Mul", "ConstantOfShape", "ReduceSum", "Add"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"


def test_huge_declared_input_with_symbolic_batch_is_refused():
    err = rejected(huge_input_model().SerializeToString())
    assert err.code == "allocation_too_large" and "[1, 64, 50000000]" in err.message


def test_huge_input_used_only_through_its_shape_is_refused():
    """The graph input itself is checked, not only what is computed from it."""
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, 50_000_000])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [3])])
    err = rejected(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    assert err.code == "allocation_too_large" and "'x'" in err.message


def test_weight_whose_bytes_do_not_fill_its_shape_is_refused():
    """Large weights never reach onnx's checker (it sees a copy without them), so their sizes are checked here."""
    model = relu_model()
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    w.raw_data = w.raw_data[:-4]
    model.graph.initializer.append(w)
    err = rejected(model.SerializeToString())
    assert err.code == "invalid_model" and "16380 bytes" in err.message and "'w'" not in err.message


def test_opset_out_of_range():
    assert rejected(relu_model(opset=999).SerializeToString()).code == "unsupported_opset"
    assert rejected(relu_model(opset=5).SerializeToString()).code == "unsupported_opset"


def test_too_many_nodes():
    assert rejected(relu_model().SerializeToString(), limits=Limits(max_nodes=0)).code == "too_many_nodes"


def test_initializers_over_cap(example_model_bytes):
    assert rejected(example_model_bytes, limits=Limits(max_initializer_bytes=100)).code == "initializers_too_large"


def test_dynamic_non_batch_dimension_needs_a_size():
    model = relu_model(shape=("N", "features")).SerializeToString()
    err = rejected(model)
    assert err.code == "dynamic_dimension"
    assert "features" in err.message
    fixed = load_onnx(model, input_shapes={"x": [None, 7]})
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 7


def test_input_shape_mismatch():
    err = rejected(relu_model(shape=(2, 4)).SerializeToString(), input_shapes={"x": [2, 5]})
    assert err.code == "input_shape_mismatch"


def test_invalid_graph_fails_checker():
    model = single_node_model(
        helper.make_node("Relu", ["missing"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    assert rejected(model.SerializeToString()).code == "invalid_model"
