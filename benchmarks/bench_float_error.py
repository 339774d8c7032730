"""The float32 forward error bound (``certify.local.float_error``) against the errors observed, per model.

For each model and sample region (digits MLP: test images with an L-inf ball of ``--eps``; mnistfc: the input
boxes of the VNN-COMP properties at that eps), the bound on every output and on the margin rows ``y_0 - y_j``
(backward bound) from IBP and CROWN intermediate bounds, and the largest |float32 - float64| seen in torch and in
onnxruntime at random points and vertices of the region. A bound below an observed error is a bug (the script
stops); the ratio says how loose the bound is.

    python benchmarks/bench_float_error.py [--eps 0.03] [--samples 5] [--points 200] [--dev DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

from certify.convert import to_torch
from certify.local.bounds import Propagation, float64_graph
from certify.local.float_error import forward_errors
from certify.local.region import Region
from certify.vnnlib import read_vnnlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DEV = os.path.join(ROOT, "..", "shared", "vnncomp2021-dev")


def float32_points(lo: np.ndarray, hi: np.ndarray, count: int, rng) -> np.ndarray:
    u = rng.random((count, *lo.shape))
    u[: count // 3] = u[: count // 3].round()
    x = (lo + u * (hi - lo)).astype(np.float32)
    x = np.where(x < lo, np.nextafter(x, np.float32(np.inf)), x)
    return np.where(x > hi, np.nextafter(x, np.float32(-np.inf)), x)


def regions(name: str, path: str, eps: float, samples: int, dev: str) -> tuple[Region, tuple]:
    model = onnx.load(path)
    shape = tuple(d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim)[1:]
    if name == "digits":
        x = np.load(os.path.join(ROOT, "examples", "digits_test.npz"))["x"][:samples].astype(np.float64)
        return Region.ball(torch.as_tensor(x.reshape(samples, *shape)), eps, "linf", (0.0, 1.0)), shape
    cases = [read_vnnlib(os.path.join(dev, "mnistfc", f"prop_{i}_{eps:g}.vnnlib")).cases[0] for i in range(samples)]
    lower = np.stack([c.lower for c in cases]).reshape(samples, *shape)
    upper = np.stack([c.upper for c in cases]).reshape(samples, *shape)
    return Region.box(torch.as_tensor(lower), torch.as_tensor(upper)), shape


def measure(path: str, region: Region, shape, points: int, method: str) -> dict:
    module = to_torch(onnx.load(path))
    g64 = float64_graph(module)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    began = time.monotonic()
    errors = forward_errors(Propagation(g64, region, method))
    n = region.lower.shape[0]
    bound = errors.output.reshape(n, -1).numpy()
    k = bound.shape[1]
    rows = np.eye(k)[:1] - np.eye(k)[1:]
    spec = errors.spec(torch.as_tensor(rows).reshape(k - 1, 1, k).expand(-1, n, k)).numpy()
    seconds = time.monotonic() - began
    rng = np.random.default_rng(0)
    seen, seen_rows = np.zeros_like(bound), np.zeros_like(spec)
    for i in range(n):
        x = float32_points(region.lower[i].numpy(), region.upper[i].numpy(), points, rng)
        with torch.no_grad():
            exact = g64(torch.as_tensor(x, dtype=torch.float64)).reshape(len(x), -1).numpy()
            ours = module(torch.as_tensor(x)).reshape(len(x), -1).double().numpy()
        runtime = np.concatenate([session.run(None, {feed: r.reshape(1, *shape)})[0].reshape(1, -1) for r in x])
        for y in (ours, runtime.astype(np.float64)):
            seen[i] = np.maximum(seen[i], np.abs(y - exact).max(0))
            seen_rows[:, i] = np.maximum(seen_rows[:, i], np.abs((y - exact) @ rows.T).max(0))
    if np.any(seen > bound) or np.any(seen_rows > spec):
        raise SystemExit(f"{path}: an observed float32 error exceeds the bound")
    return {"bound": bound.max(), "seen": seen.max(), "rows": np.median(spec), "rows seen": seen_rows.max(),
            "ms": 1000 * seconds / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--dev", default=DEFAULT_DEV)
    args = parser.parse_args()
    models = {"digits": os.path.join(ROOT, "examples", "digits_mlp.onnx"),
              "mnistfc 256x6": os.path.join(args.dev, "mnistfc", "mnist-net_256x6.onnx")}
    print(f"float32 forward error, eps {args.eps:g}, {args.samples} samples, {args.points} points each")
    print(f"{'model':<15}{'method':<8}{'max bound':>12}{'max seen':>12}{'ratio':>10}{'row bound':>12}"
          f"{'row seen':>12}{'ms/sample':>11}")
    for name, path in models.items():
        if not os.path.exists(path):
            continue
        region, shape = regions(name, path, args.eps, args.samples, args.dev)
        for method in ("ibp", "crown"):
            r = measure(path, region, shape, args.points, method)
            print(f"{name:<15}{method:<8}{r['bound']:>12.3e}{r['seen']:>12.3e}{r['bound'] / r['seen']:>10.3g}"
                  f"{r['rows']:>12.3e}{r['rows seen']:>12.3e}{r['ms']:>11.1f}")
    print("row bound: median over samples and margin rows y_0 - y_j (backward bound); row seen: largest observed")


if __name__ == "__main__":
    main()
