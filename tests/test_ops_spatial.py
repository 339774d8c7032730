"""Convolution, pooling, normalisation and resize operators: onnx's backend cases, plus onnxruntime comparisons
for attribute combinations those cases leave out (older opsets, SAME_LOWER, storage_order, even LRN sizes...)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from certify.conformance import cases_for
from certify.convert import to_torch
from certify.errors import ModelRejected
from tests.onnx_builders import assert_case_passes

SPATIAL_OPS = [
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "LRN",
    "LpNormalization",
    "Resize",
    "Upsample",
]


@pytest.mark.parametrize("case", cases_for(SPATIAL_OPS), ids=lambda c: c.name)
def test_backend_case(case):
    assert_case_passes(case)


def _model(op_type, inputs, attrs=None, opset=22, n_outputs=1, initializers=(), node_inputs=None):
    """A one-node float model; ``inputs`` maps names to arrays (graph inputs unless listed as initializers).

    ``node_inputs`` (default: the names of ``inputs``) may hold "" for an omitted optional input. Outputs are
    float, except MaxPool's second output (int64 indices).
    """
    names = list(inputs) if node_inputs is None else node_inputs
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_outputs)], **(attrs or {}))
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for name, value in inputs.items()
        if name not in initializers
    ]
    out_types = [TensorProto.INT64 if op_type == "MaxPool" and i == 1 else TensorProto.FLOAT for i in range(n_outputs)]
    outputs = [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(out_types)]
    inits = [onnx.numpy_helper.from_array(inputs[name], name) for name in initializers]
    graph = helper.make_graph([node], "g", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _compare_with_onnxruntime(model, inputs, rtol=1e-5, atol=1e-5):
    """Run ``model`` in onnxruntime and converted; the graph inputs are fed from ``inputs``."""
    feeds = {vi.name: inputs[vi.name] for vi in model.graph.input}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    graph = to_torch(onnx.shape_inference.infer_shapes(model))
    with torch.no_grad():
        got = graph(*[torch.from_numpy(feeds[name]) for name in graph.input_names])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=rtol, atol=atol)
    return graph


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad_stride_2_matches_onnxruntime(auto_pad):
    inputs = {"x": _rand(1, 2, 7, 8), "w": _rand(3, 2, 4, 3, seed=1), "b": _rand(3, seed=2)}
    model = _model("Conv", inputs, {"auto_pad": auto_pad, "strides": [2, 2]}, initializers=("w", "b"))
    graph = _compare_with_onnxruntime(model, inputs)
    conv = next(m for m, _, _ in graph.steps())
    assert conv.kernel_shape == [4, 3] and conv.strides == [2, 2] and conv.auto_pad == auto_pad
    # 7 rows, span 4, stride 2: 4 outputs need 3 rows of padding; 8 columns, span 3: 4 outputs need 1.
    expected = {"SAME_UPPER": [1, 0, 2, 1], "SAME_LOWER": [2, 1, 1, 0], "VALID": [0, 0, 0, 0]}[auto_pad]
    assert conv.resolved_pads([7, 8]) == expected
    assert torch.equal(graph.constant("w"), torch.from_numpy(inputs["w"]))


def test_conv_1d_and_3d_grouped_dilated_asymmetric_pads():
    inputs = {"x": _rand(2, 4, 9), "w": _rand(6, 2, 3, seed=1)}
    attrs = {"group": 2, "dilations": [2], "pads": [1, 3], "strides": [2]}
    _compare_with_onnxruntime(_model("Conv", inputs, attrs, opset=11), inputs)
    inputs = {"x": _rand(1, 2, 5, 6, 4), "w": _rand(2, 1, 2, 3, 2, seed=1)}
    attrs = {"group": 2, "dilations": [1, 2, 1], "pads": [0, 1, 1, 1, 0, 0], "auto_pad": "NOTSET"}
    _compare_with_onnxruntime(_model("Conv", inputs, attrs, opset=1), inputs)


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 2], "output_shape": [8, 6], "auto_pad": "SAME_UPPER"},
        {"strides": [3, 2], "auto_pad": "SAME_LOWER"},
        {"strides": [2, 3], "pads": [1, 0, 2, 1], "output_padding": [1, 2], "dilations": [2, 1], "group": 2},
    ],
)
def test_conv_transpose_matches_onnxruntime(attrs):
    inputs = {"x": _rand(1, 4, 4, 3), "w": _rand(4, 2, 3, 3, seed=1), "b": _rand(2 * attrs.get("group", 1), seed=2)}
    graph = _compare_with_onnxruntime(_model("ConvTranspose", inputs, attrs), inputs)
    op = next(m for m, _, _ in graph.steps())
    y = graph(*[torch.from_numpy(inputs[n]) for n in graph.input_names])
    assert op.output_spatial_shape([4, 3], [3, 3]) == list(y.shape[2:])


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices_with_pads_ceil_mode_and_storage_order(storage_order):
    inputs = {"x": _rand(2, 3, 7, 6)}
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}
    attrs["storage_order"] = storage_order
    _compare_with_onnxruntime(_model("MaxPool", inputs, attrs, opset=12, n_outputs=2), inputs)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 2, 0], "ceil_mode": 1, "count_include_pad": 1},
        {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [0, 1, 2, 1], "ceil_mode": 1, "count_include_pad": 0},
        {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    ],
)
def test_average_pool_matches_onnxruntime(attrs):
    inputs = {"x": _rand(1, 2, 8, 7)}
    graph = _compare_with_onnxruntime(_model("AveragePool", inputs, attrs, opset=11), inputs)
    op = next(m for m, _, _ in graph.steps())
    counts = op.window_counts([8, 7])
    assert counts.shape[2:] == tuple(op.output_spatial_shape([8, 7]))
    assert counts.min() >= 1 and counts.max() <= np.prod(attrs["kernel_shape"])


def test_lrn_matches_onnxruntime():
    inputs = {"x": _rand(2, 6, 3, 3)}
    _compare_with_onnxruntime(_model("LRN", inputs, {"size": 3, "alpha": 0.5, "beta": 0.6, "bias": 2.0}), inputs)


def test_lrn_even_size_window_follows_the_onnx_formula():
    """size 4 sums channels c-1..c+2 (torch's local_response_norm would take c-2..c+1; onnxruntime refuses it)."""
    x = _rand(1, 6, 2)
    graph = to_torch(_model("LRN", {"x": x}, {"size": 4, "alpha": 0.5, "beta": 0.6, "bias": 2.0}))
    squares = np.pad(x**2, ((0, 0), (1, 2), (0, 0)))
    square_sum = sum(squares[:, i : i + 6] for i in range(4))
    expected = x / (2.0 + 0.5 / 4 * square_sum) ** 0.6
    np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), expected, rtol=1e-5)


def test_group_normalization_opset_18_has_one_scale_per_group():
    inputs = {"x": _rand(2, 6, 3), "scale": _rand(3, seed=1), "bias": _rand(3, seed=2)}
    model = _model("GroupNormalization", inputs, {"num_groups": 3}, opset=18)
    graph = to_torch(model)
    with torch.no_grad():
        got = graph(*[torch.from_numpy(inputs[n]) for n in ("x", "scale", "bias")]).numpy()
    x = inputs["x"].reshape(2, 3, -1)
    normed = ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)).reshape(2, 3, 2, 3)
    expected = normed * inputs["scale"][None, :, None, None] + inputs["bias"][None, :, None, None]
    np.testing.assert_allclose(got, expected.reshape(2, 6, 3), rtol=1e-5, atol=1e-5)


def test_batch_normalization_training_mode_is_refused():
    inputs = {n: _rand(3, seed=i) ** 2 for i, n in enumerate(("scale", "b", "mean", "var"))}
    inputs = {"x": _rand(2, 3, 4), **inputs}
    with pytest.raises(ModelRejected) as err:
        to_torch(_model("BatchNormalization", inputs, {"training_mode": 1}, opset=15, n_outputs=3))
    assert err.value.code == "unsupported_attribute"


def test_batch_normalization_opset_9_matches_onnxruntime():
    stats = {n: np.abs(_rand(3, seed=i)) + 0.1 for i, n in enumerate(("scale", "b", "mean", "var"))}
    inputs = {"x": _rand(2, 3, 4, 2), **stats}
    _compare_with_onnxruntime(_model("BatchNormalization", inputs, {"epsilon": 1e-3}, opset=9), inputs)


def _resize_model(x, attrs, opset, scales=None, sizes=None):
    """A Resize model with constant scales or sizes (the other omitted), and its inputs."""
    inputs = {"x": x}
    if sizes is None:
        inputs["scales"] = np.array(scales, np.float32)
        node_inputs = ["x", "", "scales"]
    else:
        inputs["sizes"] = np.array(sizes, np.int64)
        node_inputs = ["x", "", "", "sizes"]
    return _model("Resize", inputs, attrs, opset, initializers=node_inputs[-1:], node_inputs=node_inputs), inputs


@pytest.mark.parametrize(
    ("attrs", "scales", "sizes"),
    [
        ({"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, [1, 1, 0.6, 1.7], None),
        ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 3, 11]),
        ({"mode": "linear", "coordinate_transformation_mode": "tf_half_pixel_for_nn"}, [1, 1, 2.5, 0.5], None),
        ({"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, [1, 2, 9, 1]),
    ],
)
def test_resize_opset_13_matches_onnxruntime(attrs, scales, sizes):
    model, inputs = _resize_model(_rand(1, 2, 5, 4), attrs, 13, scales=scales, sizes=sizes)
    _compare_with_onnxruntime(model, inputs)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 3, 2.5], [1, 1, 0.5, 0.7]])
def test_resize_opset_10_and_upsample_match_onnxruntime(mode, scales):
    x = _rand(1, 2, 4, 6)
    inputs = {"x": x, "scales": np.array(scales, np.float32)}
    _compare_with_onnxruntime(_model("Resize", inputs, {"mode": mode}, opset=10, initializers=("scales",)), inputs)
    if min(scales) >= 1:
        upsample_9 = _model("Upsample", inputs, {"mode": mode}, opset=9, initializers=("scales",))
        _compare_with_onnxruntime(upsample_9, inputs)
        upsample_7 = _model("Upsample", {"x": x}, {"mode": mode, "scales": scales}, opset=7)
        _compare_with_onnxruntime(upsample_7, {"x": x})


def test_resize_plan_is_one_matrix_per_resized_axis():
    model, inputs = _resize_model(_rand(1, 1, 4, 6), {"mode": "linear"}, 19, scales=[1, 1, 2, 0.5])
    graph = to_torch(model)
    op = next(m for m, _, _ in graph.steps())
    plan, out_shape = op.plan((1, 1, 4, 6))
    assert out_shape == (1, 1, 8, 3)
    assert [(s.axis, s.input_size, s.output_size) for s in plan] == [(2, 4, 8), (3, 6, 3)]
    for step in plan:
        np.testing.assert_allclose(step.dense_matrix().sum(axis=1), 1.0)
    x = torch.from_numpy(inputs["x"])
    rows, cols = (torch.from_numpy(step.dense_matrix()).float() for step in plan)
    by_matrices = rows @ x[0, 0] @ cols.T
    torch.testing.assert_close(graph(x)[0, 0], by_matrices)


@pytest.mark.parametrize(
    ("op_type", "attrs"),
    [
        ("Conv", {"auto_pad": "SAME_MIDDLE"}),
        ("MaxPool", {}),
        ("LRN", {"size": 0}),
        ("LpNormalization", {"p": 3}),
    ],
)
def test_invalid_attributes_are_refused(op_type, attrs):
    inputs = {"x": _rand(1, 2, 4, 4)}
    if op_type == "Conv":
        inputs["w"] = _rand(2, 2, 3, 3)
    with pytest.raises(ModelRejected) as err:
        to_torch(_model(op_type, inputs, attrs))
    assert err.value.code == "invalid_attribute"


def test_resize_output_over_the_allocation_limit_is_refused():
    model, inputs = _resize_model(_rand(1, 1, 2, 2), {"mode": "nearest"}, 13, scales=[1, 1, 1e5, 1e5])
    graph = to_torch(model)
    with pytest.raises(ModelRejected) as err:
        graph(torch.from_numpy(inputs["x"]))
    assert err.value.code == "allocation_too_large"
