"""Elementwise, activation, reduction and linear operators.

onnx's backend cases run at each operator's newest opset; the older attribute forms (Clip bounds, Reduce* axes,
2-D Softmax) are checked against onnxruntime on hand-built models, and gradients through every activation are
checked with autograd.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from certify.conformance import cases_for, run_case
from certify.convert import to_torch
from certify.errors import ModelRejected
from tests.onnx_builders import assert_case_passes

ELEMENTWISE_OPS = [
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Pow", "Exp", "Log", "Reciprocal", "Erf", "Max", "Min", "Sum",
    "Mean", "Where", "Cast",
]  # fmt: skip
ACTIVATION_OPS = [
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Clip", "Softmax", "LogSoftmax",
]  # fmt: skip
REDUCE_OPS = [
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceSumSquare",
    "ReduceLogSumExp", "ArgMax", "ArgMin",
]  # fmt: skip
LINEAR_OPS = ["Gemm", "MatMul"]
OPS = ELEMENTWISE_OPS + ACTIVATION_OPS + REDUCE_OPS + LINEAR_OPS


@pytest.mark.parametrize("case", cases_for(OPS), ids=lambda c: c.name)
def test_backend_case(case):
    assert_case_passes(case)


def _as_arrays(case):
    """The case with TensorProto-valued data turned into arrays, or None when one has a dtype we do not use."""
    data_sets = []
    for inputs, outputs in case.data_sets:
        arrays = []
        for value in list(inputs) + list(outputs):
            if isinstance(value, onnx.TensorProto):
                if value.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                    return None
                value = numpy_helper.to_array(value)
            arrays.append(value)
        data_sets.append((arrays[: len(inputs)], arrays[len(inputs) :]))
    converted = copy.copy(case)
    converted.data_sets = data_sets
    return converted


def test_cast_cases_between_float_types():
    """onnx stores the Cast cases' data as TensorProtos (which the harness skips); the float ones must pass too."""
    ran = 0
    for case in cases_for(["Cast"]):
        converted = _as_arrays(case)
        if converted is None:
            continue
        status, detail = run_case(converted)
        assert status == "pass", f"{case.name}: {detail}"
        ran += 1
    assert ran == 12  # FLOAT <-> DOUBLE <-> FLOAT16, Cast and the CastLike bodies


# ---------------------------------------------------------------- hand-built single-node models


def _model(op_type, opset, inputs, constants=None, n_outputs=1, **attrs):
    """One ``op_type`` node reading the run-time ``inputs`` (arrays) then the ``constants`` (name -> array or
    None for an omitted optional input), at ``opset``."""
    constants = constants or {}
    names = [f"x{i}" for i in range(len(inputs))]
    node_inputs = names + [name if value is not None else "" for name, value in constants.items()]
    outputs = [f"y{i}" for i in range(n_outputs)]
    graph = helper.make_graph(
        [helper.make_node(op_type, node_inputs, outputs, name="node", **attrs)],
        "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in
         zip(names, inputs)],
        [onnx.ValueInfoProto(name=n) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in constants.items() if v is not None],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _ours(model, inputs):
    out = to_torch(model)(*[torch.from_numpy(a) for a in inputs])
    return [t.detach().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _check_against_onnxruntime(op_type, opset, inputs, constants=None, n_outputs=1, **attrs):
    model = _model(op_type, opset, inputs, constants, n_outputs, **attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {f"x{i}": a for i, a in enumerate(inputs)})
    for got, want in zip(_ours(model, inputs), expected):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("opset", "constants", "attrs"),
    [
        (6, {}, {"min": -0.5, "max": 0.3}),
        (6, {}, {"min": 0.2}),
        (6, {}, {}),
        (11, {"lo": np.float32(-0.5), "hi": np.float32(0.3)}, {}),
        (11, {"lo": None, "hi": np.float32(0.3)}, {}),
        (13, {"lo": np.float32(-0.1)}, {}),
        (13, {"lo": np.float32(0.5), "hi": np.float32(-0.5)}, {}),  # min > max: everything becomes max
    ],
)
def test_clip_bounds_from_attributes_or_inputs(opset, constants, attrs):
    _check_against_onnxruntime("Clip", opset, [X], constants, **attrs)


def test_clip_keeps_constant_bounds_as_fields():
    old = to_torch(_model("Clip", 6, [X], min=-0.5, max=0.3))
    new = to_torch(_model("Clip", 13, [X], {"lo": np.float32(-0.5), "hi": np.float32(0.3)}))
    for graph in (old, new):
        ((module, _, _),) = graph.steps()
        assert (module.min, module.max) == pytest.approx((-0.5, 0.3))


def test_clip_on_integers():
    x = np.array([-5, 0, 3, 9], dtype=np.int64)
    _check_against_onnxruntime("Clip", 13, [x], {"lo": np.int64(-1), "hi": np.int64(4)})


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(
    ("opset", "attrs"),
    [(7, {}), (11, {"axis": 2}), (11, {"axis": 0}), (11, {"axis": -1}), (13, {}), (13, {"axis": 1}), (13, {"axis": 0})],
)
def test_softmax_axis_semantics_by_opset(op_type, opset, attrs):
    _check_against_onnxruntime(op_type, opset, [X], **attrs)


def test_softmax_before_13_normalizes_the_flattened_block():
    y = _ours(_model("Softmax", 11, [X], axis=1), [X])[0]
    np.testing.assert_allclose(y.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert not np.allclose(y.sum(axis=2), 1.0)


AXES = np.array([0, -1], dtype=np.int64)
REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}


@pytest.mark.parametrize(
    "op_type", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceSumSquare", "ReduceLogSumExp"],
)  # fmt: skip
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_attribute_and_input(op_type, keepdims):
    since = REDUCE_AXES_INPUT_SINCE.get(op_type, 18)
    _check_against_onnxruntime(op_type, 11, [X], keepdims=keepdims, axes=[0, -1])
    _check_against_onnxruntime(op_type, since - 1, [X], keepdims=keepdims)  # no axes attribute: all axes
    _check_against_onnxruntime(op_type, since, [X], {"axes": AXES}, keepdims=keepdims)
    _check_against_onnxruntime(op_type, since, [X], keepdims=keepdims)  # omitted axes input: all axes


@pytest.mark.parametrize(("op_type", "expected"), [("ReduceSum", X), ("ReduceMax", X), ("ReduceL1", np.abs(X))])
def test_reduce_noop_with_empty_axes(op_type, expected):
    empty = np.array([], dtype=np.int64)
    since = REDUCE_AXES_INPUT_SINCE.get(op_type, 18)
    model = _model(op_type, since, [X], {"axes": empty}, noop_with_empty_axes=1)
    np.testing.assert_allclose(_ours(model, [X])[0], expected)


def test_reduce_keeps_constant_axes_as_a_field():
    ((module, _, _),) = to_torch(_model("ReduceMean", 18, [X], {"axes": AXES})).steps()
    assert module.axes == [0, -1] and module.keepdims


def test_reduce_rejects_an_out_of_range_axis():
    with pytest.raises(ValueError, match="out of range"):
        _ours(_model("ReduceSum", 11, [X], axes=[3]), [X])


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": -1, "keepdims": 0}, {"axis": 1, "select_last_index": 1}])
def test_arg_extreme(op_type, attrs):
    ties = np.array([[1, 3, 3, 0], [2, 2, 0, 0]], dtype=np.float32)
    _check_against_onnxruntime(op_type, 12, [ties], **attrs)


@pytest.mark.parametrize("opset", [7, 9, 11, 13])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_across_opsets(opset, trans_a, trans_b):
    a = RNG.standard_normal((3, 4) if not trans_a else (4, 3)).astype(np.float32)
    b = RNG.standard_normal((4, 5) if not trans_b else (5, 4)).astype(np.float32)
    c = RNG.standard_normal((5,)).astype(np.float32)
    _check_against_onnxruntime("Gemm", opset, [a], {"b": b, "c": c}, alpha=0.5, beta=2.0, transA=trans_a,
                               transB=trans_b)  # fmt: skip


def test_gemm_keeps_attributes_and_exposes_constant_weights():
    a = RNG.standard_normal((2, 4)).astype(np.float32)
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    graph = to_torch(_model("Gemm", 13, [a], {"w": w}, alpha=0.5, transB=1))
    ((module, inputs, _),) = graph.steps()
    assert (module.alpha, module.beta, module.trans_a, module.trans_b) == (0.5, 1.0, False, True)
    np.testing.assert_array_equal(graph.constant(inputs[1]).numpy(), w)
    without_c = graph(torch.from_numpy(a)).numpy()  # C is optional from opset 11
    np.testing.assert_allclose(without_c, 0.5 * a @ w.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("op_type", "opset", "inputs"),
    [
        ("Max", 6, [X, X[::-1].copy()]),
        ("Min", 8, [X, X[0, 0]]),
        ("Mean", 8, [X, X[:, :1], X[0]]),
        ("Sum", 8, [X]),
        ("Pow", 7, [np.abs(X), X]),
        ("Pow", 12, [np.array([2, 3], dtype=np.int64), np.array([3.0, 0.5], dtype=np.float32)]),
        ("Div", 7, [np.array([-7, 7, -7], dtype=np.int32), np.array([2, -2, -2], dtype=np.int32)]),
        ("PRelu", 7, [X, np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)]),
        ("PRelu", 9, [X, np.array([[0.1], [0.2], [0.3]], dtype=np.float32)]),
        ("MatMul", 9, [X, RNG.standard_normal((4, 2)).astype(np.float32)]),
        ("MatMul", 13, [X[0, 0], RNG.standard_normal((4,)).astype(np.float32)]),
    ],
)
def test_older_opsets_and_broadcasting(op_type, opset, inputs):
    _check_against_onnxruntime(op_type, opset, inputs)


@pytest.mark.parametrize(
    ("op_type", "opset", "attrs"),
    [
        ("LeakyRelu", 6, {"alpha": 0.3}),
        ("Elu", 6, {"alpha": 0.7}),
        ("Selu", 6, {"alpha": 1.5, "gamma": 2.0}),
        ("HardSigmoid", 6, {"alpha": 0.3, "beta": 0.4}),
        ("Celu", 12, {"alpha": 2.0}),
        ("Gelu", 20, {"approximate": "tanh"}),
        ("Softplus", 7, {}),
        ("Softsign", 7, {}),
    ],
)
def test_activation_attributes(op_type, opset, attrs):
    _check_against_onnxruntime(op_type, opset, [X * 4], **attrs)


def test_cast_float_to_integer_truncates_and_to_bool_tests_nonzero():
    x = np.array([-2.7, -0.5, 0.0, 0.5, 2.7], dtype=np.float32)
    assert _ours(_model("Cast", 13, [x], to=onnx.TensorProto.INT32), [x])[0].tolist() == [-2, 0, 0, 0, 2]
    assert _ours(_model("Cast", 13, [x], to=onnx.TensorProto.BOOL), [x])[0].tolist() == [1, 1, 0, 1, 1]


def test_cast_to_an_unsupported_type_is_refused():
    with pytest.raises(ModelRejected) as e:
        to_torch(_model("Cast", 13, [X], to=onnx.TensorProto.STRING))
    assert e.value.code == "unsupported_dtype"


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ModelRejected, match="approximate"):
        to_torch(_model("Gelu", 20, [X], approximate="erf"))


# ---------------------------------------------------------------- gradients

ACTIVATION_ATTRS = {"Gelu": {"approximate": "tanh"}, "Softmax": {"axis": 1}, "LogSoftmax": {"axis": 1}}
ACTIVATION_OPSET = {"Gelu": 20, "Mish": 22, "HardSwish": 22, "Celu": 22}


def _converted_activation(op_type, x):
    constants = {}
    if op_type == "PRelu":
        constants = {"slope": np.full(x.shape[-1], 0.25, dtype=x.dtype)}
    elif op_type == "Clip":
        constants = {"lo": np.array(-0.5, dtype=x.dtype), "hi": np.array(0.5, dtype=x.dtype)}
    opset = ACTIVATION_OPSET.get(op_type, 13)
    return to_torch(_model(op_type, opset, [x], constants, **ACTIVATION_ATTRS.get(op_type, {})))


@pytest.mark.parametrize("op_type", ACTIVATION_OPS)
def test_gradient_flows_through_every_activation(op_type):
    x = torch.from_numpy(X[0] * 3).double().requires_grad_()
    graph = _converted_activation(op_type, x.detach().numpy())
    y = graph(x)
    (grad,) = torch.autograd.grad((y * torch.arange(y.numel()).reshape(y.shape)).sum(), x)
    assert torch.isfinite(grad).all() and (grad != 0).any()


@pytest.mark.parametrize("op_type", ["Elu", "Selu", "Softplus", "Gelu", "Mish", "Softmax", "LogSoftmax", "HardSwish"])
def test_gradcheck_float64(op_type):
    x = torch.from_numpy(X[0] * 2).double().requires_grad_()
    graph = _converted_activation(op_type, x.detach().numpy())
    assert torch.autograd.gradcheck(graph, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("op_type", "inputs"),
    [("Pow", 2), ("Div", 2), ("Max", 3), ("Mean", 2), ("Gemm", 3), ("MatMul", 2), ("ReduceL2", 1),
     ("ReduceLogSumExp", 1), ("Sqrt", 1), ("Erf", 1)],
)  # fmt: skip
def test_gradcheck_arithmetic_and_reductions(op_type, inputs):
    shapes = {"Gemm": [(2, 3), (3, 4), (4,)], "MatMul": [(2, 3), (3, 4)]}.get(op_type, [(2, 3)] * inputs)
    arrays = [np.abs(RNG.standard_normal(s)) + 0.5 for s in shapes]
    graph = to_torch(_model(op_type, 13, arrays))
    tensors = tuple(torch.from_numpy(a).requires_grad_() for a in arrays)
    assert torch.autograd.gradcheck(graph, tensors, eps=1e-6, atol=1e-5)
