"""Train a small CNN on scikit-learn's 8x8 digits, the same split and recipe as ``train_digits.py``.

Writes ``examples/digits_cnn.onnx`` (1x8x8 -> conv 8 -> conv 16 (stride 2) -> flatten -> 32 -> 10, ReLU, inputs in
[0, 1], dynamic batch). Its held-out inputs are ``digits_test.npz`` reshaped to (N, 1, 8, 8), e.g. for
``lipcert units``: ``python -c "import numpy as np; d = np.load('examples/digits_test.npz'); np.savez('cnn.npz',
x=d['x'].reshape(-1, 1, 8, 8), y=d['y'])"``.
"""

from __future__ import annotations

import io
import os
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import HERE, train  # noqa: E402  (the example's data, split and training loop)


def build() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def main() -> None:
    model, x_test, y_test = train(build=build, epochs=30)
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # without the Unflatten, the exported network takes (N, 1, 8, 8) images
        torch.onnx.export(model[1:], (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with open(os.path.join(HERE, "digits_cnn.onnx"), "wb") as f:
        f.write(buf.getvalue())
    print(f"test accuracy {acc:.4f} on {len(y_test)} samples; wrote digits_cnn.onnx ({len(buf.getvalue())} bytes)")


if __name__ == "__main__":
    main()
