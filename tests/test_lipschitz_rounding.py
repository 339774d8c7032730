"""The float error bound of the forward pass: never below the measured float32 error (against float64), small on
ordinary networks, and subtracted from the margin before a radius is certified."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import certify
from certify.lipschitz import certified_radii, network_bound
from certify.lipschitz.certificate import float_errors
from tests.test_lipschitz_regressions import build, graph_of


def convert(model: nn.Module, shape) -> certify.OnnxGraph:
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.randn(1, *shape), buffer, dynamo=False, opset_version=13)
    return certify.to_torch(certify.load_onnx(buffer.getvalue()))


def measured_error(graph, xs: torch.Tensor) -> np.ndarray:
    """``||f32(x) - f64(x)||_2`` per sample, the float64 run standing in for exact arithmetic."""
    exact = copy.deepcopy(graph).double()
    with torch.no_grad():
        f32 = torch.stack([graph(x.unsqueeze(0)).reshape(-1) for x in xs]).double()
        f64 = torch.stack([exact(x.double().unsqueeze(0)).reshape(-1) for x in xs])
    return torch.linalg.vector_norm(f32 - f64, dim=1).numpy()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.lin = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x))) + self.conv(x)
        return self.lin(self.pool(h).flatten(1))


@pytest.mark.parametrize("name", ["mlp", "residual-cnn"])
def test_the_bound_covers_the_measured_float32_error(name):
    torch.manual_seed(0)
    if name == "mlp":
        model, shape = nn.Sequential(nn.Linear(20, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, 10)), (20,)
    else:
        model, shape = Residual(), (2, 8, 8)
        model.bn.running_var.uniform_(0.5, 2.0)
    graph = convert(model, shape)
    xs = torch.randn((12, *shape), generator=torch.Generator().manual_seed(1)) * 5
    errors = float_errors(graph, xs.numpy(), network_bound(graph, shape))
    measured = measured_error(graph, xs)
    assert (measured <= errors[:, 0]).all(), (measured, errors[:, 0])
    with torch.no_grad():
        logits = torch.stack([graph(x.unsqueeze(0)).reshape(-1) for x in xs])
    assert (errors[:, 0] < 1e-3 * torch.linalg.vector_norm(logits, dim=1).numpy()).all()  # cheap and still small


def test_a_margin_within_the_float_error_certifies_nothing():
    # f0 - f1 = 1e7 (x0 - x1) + 1e-3: at x0 = x1 the float32 products round by far more than the margin
    w = np.array([[1e7, -1e7], [0.0, 0.0]], np.float32)
    graph = graph_of(build([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], (2,), (2,),
                           [("w", w), ("b", np.array([1e-3, 0.0], np.float32))]))
    x = np.array([[0.3, 0.3]], np.float32)
    analysis = network_bound(graph, (2,))
    errors = float_errors(graph, x, analysis)
    assert errors[0, 0] > 1e-3
    assert certified_radii(graph, x, np.array([0]), analysis)[0] == 0.0
    no_error = np.zeros_like(errors)
    assert certified_radii(graph, x, np.array([0]), analysis, errors=no_error)[0] > 0  # what real arithmetic says
