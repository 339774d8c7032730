"""Train the example classifier on scikit-learn's 8x8 digits and export it as ONNX.

Writes ``examples/digits_mlp.onnx`` (64 -> 32 -> 32 -> 10, ReLU, inputs in [0, 1], dynamic batch) and
``examples/digits_test.npz`` (the held-out split: ``x`` float32 (N, 64), ``y`` int64). No downloads: the data ship
with scikit-learn. Deterministic for a given torch/sklearn version.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def train(seed: int = 0, epochs: int = 60, build=build):
    torch.manual_seed(seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model, x_test, y_test


def export(model: nn.Module, opset: int = 13) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 64),), buf, dynamo=False, opset_version=opset,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def main() -> None:
    model, x_test, y_test = train()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    with open(os.path.join(HERE, "digits_mlp.onnx"), "wb") as f:
        f.write(export(model))
    np.savez(os.path.join(HERE, "digits_test.npz"), x=x_test, y=y_test)
    print(f"test accuracy {acc:.4f} on {len(y_test)} samples; wrote digits_mlp.onnx and digits_test.npz")


if __name__ == "__main__":
    main()
