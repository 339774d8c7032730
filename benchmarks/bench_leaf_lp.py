"""Branch and bound on tight properties, with and without the exact leaf programs (``certify.local.leaf_lp``).

Random one-hidden-layer Relu nets (6 inputs, 10 hidden units, box [-1, 1]^6); the property ``y > m - gap`` with
``m`` the exact minimum (every activation pattern's LP) and a small ``gap``, so the search must reach leaves
(subdomains with every unit split) and bound them almost exactly. Without the leaf programs such a leaf gets the
longer beta optimisation only and often ends the search as ``stuck``. Goal: every property proved with them.

    python benchmarks/bench_leaf_lp.py [--nets 8] [--gap 1e-4] [--timeout 20]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import linprog

import certify.local.bab as bab
from certify.convert import to_torch
from certify.local.bab import ReluSearch, Spec
from certify.local.bounds import float64_graph


def net(seed: int, inputs: int = 6, width: int = 10):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((width, inputs)), rng.standard_normal(width)
    w2, b2 = rng.standard_normal((1, width)), rng.standard_normal(1)
    weights = [a.astype(np.float32) for a in (w1, b1, w2, b2)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(a, n) for a, n in zip(weights, ("w1", "b1", "w2", "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, [a.astype(np.float64) for a in weights]


def exact_minimum(weights, lower, upper) -> float:
    w1, b1, w2, b2 = weights
    best = np.inf
    for pattern in itertools.product((0, 1), repeat=len(b1)):
        on = np.array(pattern, dtype=bool)
        sign = np.where(on, -1.0, 1.0)
        res = linprog((w2[0] * on) @ w1, A_ub=sign[:, None] * w1, b_ub=-sign * b1, bounds=list(zip(lower, upper)))
        if res.status == 0:
            best = min(best, res.fun + (w2[0] * on) @ b1 + b2[0])
    return best


def search(g64, lower, upper, threshold: float, timeout: float):
    def candidate(xs):
        with torch.no_grad():
            y = g64(torch.as_tensor(xs)).flatten().numpy()
        bad = np.flatnonzero(y <= threshold)
        return xs[bad[0]] if bad.size else None

    spec = Spec(np.ones((1, 1)), np.array([threshold]), [np.array([0])], np.zeros(1))
    start = time.monotonic()
    out = ReluSearch(g64, lower.shape).run(lower, upper, spec, 0.0, start + timeout, candidate)
    return out, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=8)
    parser.add_argument("--gap", type=float, default=1e-4)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with_lp = bab.close_leaves
    without_lp = lambda prop, names, spec, margin, leaves, candidate: (np.zeros(len(leaves), bool), None)  # noqa: E731
    print(f"{'net':>4} {'exact min':>10} {'with leaf LPs':>24} {'beta only':>24}")
    proved = {"with": 0, "without": 0}
    for seed in range(args.nets):
        model, weights = net(100 + seed)
        g64 = float64_graph(to_torch(model))
        lower, upper = -np.ones(6), np.ones(6)
        m = exact_minimum(weights, lower, upper)
        cells = []
        for key, hook in (("with", with_lp), ("without", without_lp)):
            bab.close_leaves = hook
            out, seconds = search(g64, lower, upper, m - args.gap, args.timeout)
            proved[key] += out.result == "holds"
            cells.append(f"{out.result:>7} {out.domains:6d} dom {seconds:5.1f} s")
        bab.close_leaves = with_lp
        print(f"{seed:>4} {m:10.4f} {cells[0]:>24} {cells[1]:>24}", flush=True)
    print(f"proved: with leaf LPs {proved['with']}/{args.nets}, beta only {proved['without']}/{args.nets}")


if __name__ == "__main__":
    main()
