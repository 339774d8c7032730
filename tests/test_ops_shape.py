"""Shape and data-movement operators: onnx's backend cases, older-opset forms against onnxruntime, allocation caps."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.conformance import cases_for
from certify.convert import to_torch
from certify.errors import ModelRejected
from tests.onnx_builders import assert_case_passes

SHAPE_OPS = [
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Pad", "Tile",
    "Expand", "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Dropout", "Range",
]  # fmt: skip


@pytest.mark.parametrize("case", cases_for(SHAPE_OPS), ids=lambda c: c.name)
def test_backend_case(case):
    assert_case_passes(case)


def _np_to_onnx(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def single_node_model(op_type, opset, inputs, n_outputs=1, initializers=None, **attrs) -> onnx.ModelProto:
    """A model of one ``op_type`` node; ``inputs`` are run-time arrays, ``initializers`` constant ones (name order:
    run-time inputs first, then the constants in the node's input order given by ``initializers``' keys)."""
    initializers = initializers or {}
    names = [f"in{i}" for i in range(len(inputs))]
    node_inputs = names + list(initializers)
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, node_inputs, outputs, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, _np_to_onnx(a), a.shape) for n, a in zip(names, inputs)],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    return onnx.shape_inference.infer_shapes(model)


def assert_matches_onnxruntime(model: onnx.ModelProto, inputs) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {f"in{i}": a for i, a in enumerate(inputs)})
    module = to_torch(model)
    with torch.no_grad():
        got = module(*[torch.from_numpy(a) for a in inputs])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g.numpy(), e)
    return expected


X = np.arange(2 * 1 * 6 * 1, dtype=np.float32).reshape(2, 1, 6, 1)
Y = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)


@pytest.mark.parametrize(
    ("op_type", "opset", "inputs", "n_outputs", "initializers", "attrs"),
    [
        ("Squeeze", 11, [X], 1, None, {"axes": [1, -1]}),
        ("Squeeze", 13, [X], 1, {"axes": np.array([1, -1])}, {}),
        ("Squeeze", 9, [X], 1, None, {}),
        ("Unsqueeze", 9, [Y], 1, None, {"axes": [0, 3]}),
        ("Unsqueeze", 11, [Y], 1, None, {"axes": [-1, 0]}),
        ("Unsqueeze", 13, [Y], 1, {"axes": np.array([2, 0])}, {}),
        ("Split", 9, [Y], 2, None, {"axis": 1, "split": [2, 3]}),
        ("Split", 11, [Y], 3, None, {"axis": 0}),
        ("Split", 13, [Y], 2, {"split": np.array([4, 1])}, {"axis": -1}),
        ("Split", 18, [Y], 2, None, {"axis": 1, "num_outputs": 2}),
        ("Slice", 9, [Y], 1, None, {"starts": [1, -4], "ends": [100, -1], "axes": [0, 1]}),
        ("Slice", 9, [Y], 1, None, {"starts": [0], "ends": [2]}),
        (
            "Slice",
            11,
            [Y],
            1,
            {"s": np.array([-1]), "e": np.array([-100]), "a": np.array([1]), "p": np.array([-2])},
            {},
        ),
        ("Slice", 13, [Y], 1, {"s": np.array([0]), "e": np.array([3]), "a": np.array([1]), "p": np.array([-1])},
         {}),  # a negative step from a start below the end: empty
        ("Pad", 9, [Y], 1, None, {"pads": [1, 2, 0, 3], "value": 1.5}),
        ("Pad", 9, [Y], 1, None, {"pads": [2, 3, 2, 3], "mode": "reflect"}),
        ("Pad", 9, [Y], 1, None, {"pads": [0, 4, 1, 0], "mode": "edge"}),
        ("Pad", 11, [Y], 1, {"pads": np.array([-1, 2, 1, -2]), "v": np.array(-3.0, np.float32)}, {}),
        ("Pad", 11, [Y], 1, {"pads": np.array([1, -2, 0, 3])}, {"mode": "edge"}),
        ("Pad", 18, [Y], 1, {"pads": np.array([1, 2]), "v": np.array(0.5, np.float32), "axes": np.array([-1])}, {}),
        ("Pad", 19, [Y], 1, {"pads": np.array([2, 7, 1, 6])}, {"mode": "wrap"}),
        ("Pad", 13, [Y.astype(np.int64)], 1, {"pads": np.array([1, 0, 0, 2]), "v": np.array(7)}, {}),
        ("Tile", 9, [Y], 1, {"r": np.array([2, 3])}, {}),
        ("Expand", 9, [Y[:, :1]], 1, {"shape": np.array([2, 1, 4])}, {}),
        ("Gather", 9, [Y], 1, {"i": np.array([[0, -1], [2, 2]])}, {"axis": 1}),
        ("Gather", 11, [Y], 1, {"i": np.array(-2)}, {"axis": 0}),
        ("Gather", 13, [np.array([3, 4, 5])], 1, {"i": np.array(1)}, {}),  # a scalar from a shape
        ("Reshape", 9, [X], 1, {"shape": np.array([0, -1, 3])}, {}),
        ("Flatten", 9, [X], 1, None, {"axis": 0}),
        ("Transpose", 9, [X], 1, None, {"perm": [2, 0, 3, 1]}),
        ("Concat", 9, [Y, Y[:2]], 1, None, {"axis": 0}),
        ("Shape", 9, [X], 1, None, {}),
        ("Shape", 15, [X], 1, None, {"start": -3, "end": -1}),
        ("Size", 9, [X], 1, None, {}),
        ("Dropout", 13, [Y], 2, {"ratio": np.array(0.7, np.float32)}, {}),
        ("Identity", 9, [Y], 1, None, {}),
    ],
)
def test_operator_forms_match_onnxruntime(op_type, opset, inputs, n_outputs, initializers, attrs):
    model = single_node_model(op_type, opset, inputs, n_outputs, initializers, **attrs)
    assert_matches_onnxruntime(model, inputs)


@pytest.mark.parametrize(("opset", "mask_dtype"), [(9, torch.float32), (11, torch.bool)])
def test_inference_dropout_before_opset_12_copies_and_keeps_everything(opset, mask_dtype):
    """onnx's reference mask at inference is all-true (onnxruntime returns all-false for these old opsets)."""
    model = single_node_model("Dropout", opset, [Y], 2, ratio=0.3)
    out, mask = to_torch(model)(torch.from_numpy(Y))
    np.testing.assert_array_equal(out.numpy(), Y)
    assert mask.dtype == mask_dtype
    assert mask.shape == Y.shape and bool(mask.all())


def test_integer_parameters_may_arrive_at_run_time():
    """Slice bounds and Pad widths computed at run time (graph inputs) give the same result as constants."""
    starts, ends, axes, steps = np.array([2, 0]), np.array([0, 5]), np.array([0, 1]), np.array([-1, 2])
    model = single_node_model("Slice", 13, [Y, starts, ends, axes, steps])
    assert_matches_onnxruntime(model, [Y, starts, ends, axes, steps])
    pads, value = np.array([0, 1, 2, 0]), np.array(9.0, np.float32)
    model = single_node_model("Pad", 13, [Y, pads, value])
    assert_matches_onnxruntime(model, [Y, pads, value])


@pytest.mark.parametrize(
    ("attr", "value", "expected"),
    [
        ("value", numpy_helper.from_array(np.array([[1, 2]], np.int32)), np.array([[1, 2]], np.int32)),
        ("value_float", 2.5, np.array(2.5, np.float32)),
        ("value_floats", [1.0, -1.0], np.array([1.0, -1.0], np.float32)),
        ("value_int", 7, np.array(7, np.int64)),
        ("value_ints", [3, 4, 5], np.array([3, 4, 5], np.int64)),
        (
            "sparse_value",
            helper.make_sparse_tensor(
                numpy_helper.from_array(np.array([5.0, 6.0], np.float32)),
                numpy_helper.from_array(np.array([1, 4], np.int64)),
                [2, 3],
            ),
            np.array([[0, 5, 0], [0, 6, 0]], np.float32),
        ),
    ],
)
def test_constant_value_attributes(attr, value, expected):
    node = helper.make_node("Constant", [], ["out0"], **{attr: value})
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("out0", TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    got = to_torch(model)().numpy()
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_constant_of_strings_is_refused():
    node = helper.make_node("Constant", [], ["out0"], value_strings=["a"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("out0", TensorProto.UNDEFINED, None)])
    with pytest.raises(ModelRejected) as info:
        to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert info.value.code == "unsupported_dtype"


HUGE = np.array([10**6, 10**6], dtype=np.int64)  # 10^12 elements, 4 TB of float32


def _refused_for_size(call, what: str) -> None:
    with pytest.raises(ModelRejected) as info:
        call()
    assert info.value.code == "allocation_too_large"
    assert what in str(info.value)


def test_constant_of_shape_refuses_huge_constant_shape_at_conversion():
    model = single_node_model("ConstantOfShape", 13, [], initializers={"shape": HUGE})
    _refused_for_size(lambda: to_torch(model), "ConstantOfShape")


def test_constant_of_shape_refuses_huge_shape_at_run_time():
    module = to_torch(single_node_model("ConstantOfShape", 13, [HUGE]))
    _refused_for_size(lambda: module(torch.from_numpy(HUGE)), "ConstantOfShape")
    assert module(torch.tensor([2, 3])).shape == (2, 3)


def test_sparse_constant_refuses_huge_dense_shape():
    values = numpy_helper.from_array(np.array([1.0], np.float32))
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0], np.int64)), [10**6, 10**6])
    node = helper.make_node("Constant", [], ["out0"], sparse_value=sparse)
    graph = helper.make_graph([node], "g", [], [onnx.ValueInfoProto(name="out0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    _refused_for_size(lambda: to_torch(model), "sparse Constant")


def test_expand_refuses_huge_shape():
    x = np.ones((1, 1), np.float32)
    _refused_for_size(
        lambda: to_torch(single_node_model("Expand", 13, [], initializers={"x": x, "shape": HUGE})), "Expand"
    )
    module = to_torch(single_node_model("Expand", 13, [x, HUGE]))
    _refused_for_size(lambda: module(torch.from_numpy(x), torch.from_numpy(HUGE)), "Expand")


def test_tile_refuses_huge_repeats():
    module = to_torch(single_node_model("Tile", 13, [np.ones((2, 2), np.float32), HUGE]))
    _refused_for_size(lambda: module(torch.ones(2, 2), torch.from_numpy(HUGE)), "Tile")


def test_data_movement_passes_gradients():
    """Slicing, padding and gathering route gradients to exactly the entries they read."""
    x = torch.arange(15.0).reshape(3, 5).requires_grad_()
    model = single_node_model("Pad", 11, [Y], initializers={"pads": np.array([0, 1, 0, 1])}, mode="reflect")
    to_torch(model)(x).sum().backward()
    # reflect-padding column 0 on the left and column 4 on the right re-reads columns 1 and 3
    np.testing.assert_array_equal(x.grad.numpy(), np.tile([1.0, 2.0, 1.0, 2.0, 1.0], (3, 1)))
