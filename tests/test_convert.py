"""Converter details not covered by the conformance cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify import Limits, ModelRejected, load_onnx, to_torch
from tests.onnx_builders import single_node_model


def sparse_matmul_model(indices, dims=(4, 3)):
    values = numpy_helper.from_array(np.array([2.0, -1.5], np.float32), "w")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array(indices, np.int64), "i"), list(dims))
    model = single_node_model(
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[1]])],
    )
    model.graph.sparse_initializer.append(sparse)
    return model


def test_sparse_initializer_becomes_a_dense_weight():
    dense = np.zeros((4, 3), np.float32)
    dense[0, 1], dense[3, 2] = 2.0, -1.5
    model = sparse_matmul_model([1, 11])  # linear positions in (4, 3)
    module = to_torch(load_onnx(model.SerializeToString()))
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), x @ dense, rtol=1e-6)
    assert torch.equal(module.constant("w"), torch.from_numpy(dense))


def test_bad_sparse_initializers_are_refused():
    with pytest.raises(ModelRejected) as info:
        load_onnx(sparse_matmul_model([1, 12]).SerializeToString())  # position 12 is outside (4, 3)
    assert info.value.code == "invalid_model"
    with pytest.raises(ModelRejected) as info:
        load_onnx(sparse_matmul_model([1, 2], dims=(100_000, 100_000)).SerializeToString(),
                  limits=Limits(max_initializer_bytes=1024**2))
    assert info.value.code == "initializers_too_large"


def test_convolutional_graphs_run_channels_last_with_the_same_values():
    w = np.random.default_rng(1).normal(size=(2, 3, 3, 3)).astype(np.float32)
    model = single_node_model(
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5, 5])],
        initializers=[numpy_helper.from_array(w, "w")],
    )
    module = to_torch(load_onnx(model.SerializeToString()))
    assert module.channels_last
    x = torch.rand(2, 3, 5, 5)
    expected = torch.nn.functional.conv2d(x, torch.from_numpy(w), padding=1)
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
