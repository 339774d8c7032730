"""Units versus random directions (Szegedy et al. 2013): constructed models where units must, and must not, win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

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
