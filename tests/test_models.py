"""Whole models through the converter: onnx's real test architectures against onnxruntime, and PyTorch exports
round-tripping to the module they came from (outputs, a dynamic batch axis, gradients)."""

from __future__ import annotations

import io
import os

import onnx
import pytest
import torch
from torch import nn

import certify
from certify.verify import verify_conversion

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = [
    "bvlc_alexnet", "vgg19", "resnet50", "squeezenet", "densenet121", "inception_v1", "inception_v2", "shufflenet",
    "zfnet512",
]  # fmt: skip


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnxruntime(name):
    path = os.path.join(LIGHT_DIR, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"onnx {onnx.__version__} does not ship {path}")
    model = certify.load_onnx(path)
    module = certify.to_torch(model)
    result = verify_conversion(model, module, batch=1)
    # Node by node: every converted node agrees with onnxruntime on onnxruntime's own inputs. The end-to-end
    # outputs may still differ where the model amplifies float32 rounding (squeezenet's head: softmax over equal
    # logits near 1e10, moved by summation order on a loaded machine); that is reported, never blamed on a node.
    assert result["nodes_checked"] == result["nodes"], result["unchecked"]
    assert result["status"] in ("ok", "ill_conditioned"), result
    assert result["first_divergent"] is None and result["max_local_error"] <= 1.0, result
    if result["status"] == "ill_conditioned":
        assert result["amplification"]["input_rel_error"] <= result["amplification"]["tolerance"], result


class MLP(nn.Module):
    """Flattens with a batch-dependent reshape, so the export computes the shape at run time."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x.reshape(x.shape[0], -1))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, stride=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then a pooled linear head."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.head = nn.Linear(channels, 5)

    def forward(self, x):
        y = torch.relu(self.branch(x) + x)
        return self.head(y.mean(dim=(2, 3)))


ARCHITECTURES = {"mlp": MLP, "cnn": small_cnn, "resblock": ResidualBlock}
INPUT_SHAPE = (3, 4, 4)


def trained_looking(factory) -> nn.Module:
    """The model in eval mode with non-trivial BatchNorm statistics, so the normalisation is really exercised."""
    torch.manual_seed(0)
    model = factory()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def exported(model: nn.Module, opset: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(2, *INPUT_SHAPE),),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return buffer.getvalue()


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_pytorch_export_round_trips(arch, opset):
    original = trained_looking(ARCHITECTURES[arch])
    module = certify.to_torch(certify.load_onnx(exported(original, opset)))
    for batch in (1, 5):
        x = torch.rand(batch, *INPUT_SHAPE)
        with torch.no_grad():
            torch.testing.assert_close(module(x), original(x), atol=1e-5, rtol=1e-5)

    x = torch.rand(5, *INPUT_SHAPE, requires_grad=True)
    module(x).square().sum().backward()
    converted_grad = x.grad.clone()
    assert torch.isfinite(converted_grad).all() and converted_grad.abs().sum() > 0
    x.grad = None
    original(x).square().sum().backward()
    torch.testing.assert_close(converted_grad, x.grad, atol=1e-5, rtol=1e-4)
