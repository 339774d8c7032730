"""Convolution + position-wise nodes + max-pooling bounded as one block (certify.lipschitz.pooled): the weighted
convolution bound never below the exact weighted norm of the materialised operator, the windows' counts never above
the periodic weights, and on small CNNs the composed bound below the product and above every lower bound."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from certify.convert import to_torch
from certify.lipschitz import network_bound
from certify.lipschitz.empirical import lower_bound
from certify.lipschitz.pooled import phase_weights, weighted_conv_bound
from certify.lipschitz.rules import Linear
from certify.load import load_onnx
from certify.ops.pooling import _window_counts

# (c_in, c_out, kernel, stride, pad, dilation, groups, n, pool kernel, pool stride, pool pad, pool dilation)
CASES = [(3, 8, 3, 1, 1, 1, 1, 12, 3, 2, 0, 1), (3, 6, 5, 2, 2, 1, 1, 15, 3, 2, 1, 1),
         (2, 4, 3, 1, 0, 1, 1, 9, 2, 2, 0, 1), (3, 5, 11, 4, 2, 1, 1, 31, 3, 2, 0, 1),
         (4, 6, 3, 1, 2, 2, 2, 10, 3, 3, 1, 1), (2, 3, 3, 1, 1, 1, 1, 11, 2, 2, 0, 2)]


def _counts(no: int, pk: int, ps: int, pp: int, pd: int) -> np.ndarray:
    n_pool = (no + 2 * pp - pd * (pk - 1) - 1) // ps + 1
    return _window_counts(no, n_pool, pk, ps, pp, pd).astype(np.float64)


@pytest.mark.parametrize("case", CASES)
def test_weighted_convolution_bound_is_above_the_exact_weighted_norm(case):
    c_in, c_out, k, s, p, d, g, n, pk, ps, pp, pd = case
    w = torch.randn(c_out, c_in // g, k, k, generator=torch.Generator().manual_seed(sum(case)), dtype=torch.float64)
    conv = Linear("conv", weight=w, conv={"stride": [s, s], "padding": [p] * 4, "dilation": [d, d], "groups": g})
    weights = phase_weights(((c_in, n, n), None, [pk, pk], [ps, ps], [pp] * 4, [pd, pd]))
    eye = torch.eye(c_in * n * n, dtype=torch.float64).reshape(-1, c_in, n, n)
    out = F.conv2d(eye, w, stride=s, padding=p, dilation=d, groups=g)
    no = out.shape[-1]
    counts = torch.from_numpy(np.outer(*[_counts(no, pk, ps, pp, pd)] * 2))
    periodic = weights[torch.arange(no) % ps][:, torch.arange(no) % ps]
    assert bool((counts <= periodic).all())  # the periodic weights cover every real window count
    exact = float(torch.linalg.matrix_norm((out * counts.sqrt()).reshape(out.shape[0], -1), 2))
    plain = float(torch.linalg.matrix_norm(out.reshape(out.shape[0], -1), 2)) * math.sqrt(float(counts.max()))
    upper = weighted_conv_bound(conv, weights, (c_in, n, n))
    assert exact <= upper <= 1.05 * plain


def _pooled_cnn(seed: int, lrn: bool) -> onnx.ModelProto:
    """Conv, Relu, [LRN,] MaxPool 3x3 stride 2, Conv, Relu, MaxPool, Flatten, Gemm on a (1, 2, 11, 11) input."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(0, 0.5, (8, 2, 3, 3)), "w2": rng.normal(0, 0.3, (8, 8, 3, 3)),
             "w3": rng.normal(0, 0.3, (5, 32)), "b3": np.zeros(5)}
    conv = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    pool = {"kernel_shape": [3, 3], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["r1"])]
    if lrn:
        nodes.append(helper.make_node("LRN", ["r1"], ["n1"], size=3, alpha=0.5, beta=0.75, bias=1.0))
    nodes += [helper.make_node("MaxPool", ["n1" if lrn else "r1"], ["p1"], **pool),
              helper.make_node("Conv", ["p1", "w2"], ["c2"], **conv), helper.make_node("Relu", ["c2"], ["r2"]),
              helper.make_node("MaxPool", ["r2"], ["p2"], **pool), helper.make_node("Flatten", ["p2"], ["f"]),
              helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 11, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("seed,lrn", [(0, False), (1, True), (2, True)])
def test_pooled_blocks_are_sound_and_below_the_product(seed, lrn):
    graph = to_torch(load_onnx(_pooled_cnn(seed, lrn).SerializeToString()))
    analysis = network_bound(graph, (2, 11, 11))
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    assert upper < product
    blocks = [c for c in analysis.chains if c.method == "pooled convolution"]
    assert [(b.input, b.output) for b in blocks] == [("x", "p1"), ("p1", "p2")]
    x = torch.rand(64, 2, 11, 11, generator=torch.Generator().manual_seed(seed))
    y = x + 1e-2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 9))
    with torch.no_grad():
        (_, at_x), (_, at_y) = graph.run(x, keep=True), graph.run(y, keep=True)
    for block in blocks:  # the block's own inequality on pairs of inputs, through the real layers
        moved = (at_x[block.output] - at_y[block.output]).double().flatten(1).norm(dim=1)
        ratio = moved / (at_x[block.input] - at_y[block.input]).double().flatten(1).norm(dim=1)
        assert float(ratio.max()) <= block.upper
    found = lower_bound(graph, torch.rand(8, 2, 11, 11, generator=torch.Generator().manual_seed(seed)))["lower"]
    assert found <= upper


def test_chain_budget_leaves_pooled_blocks_to_the_product():
    from certify.lipschitz.network import analyse

    graph = to_torch(load_onnx(_pooled_cnn(0, False).SerializeToString()))
    capped = analyse(graph, (2, 11, 11), chain_budget_s=0.0)
    assert not [c for c in capped.chains if c.method == "pooled convolution"] and capped.chains_skipped >= 2
    assert capped.composed[capped.output_name] <= capped.product[capped.output_name] * (1 + 1e-12)


def test_windows_that_tile_leave_the_product():
    # 2x2 stride 2: every position is read once, the weight is uniform and no block is formed
    model = _pooled_cnn(0, False)
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("kernel_shape", [2, 2]),
                                   helper.make_attribute("strides", [2, 2])])
    analysis = network_bound(to_torch(load_onnx(model.SerializeToString())), (2, 11, 11))
    assert not [c for c in analysis.chains if c.method == "pooled convolution"]
