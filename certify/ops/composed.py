"""Instance generators of composed families for the soundness harness (``certify.lipschitz.soundness``): fused
linear segments (Conv / Gemm followed by scale-like operators on every axis) and small DAGs (residual sums,
concatenations, shared prefixes), next to the per-operator generators they are built from."""

from __future__ import annotations

import math

import numpy as np

from certify.ops import examples


def fused_example(rng):
    """Conv or Gemm followed by one to three scale-like operators (Mul, Div, BatchNormalization, Add of constants),
    each broadcast along a random axis, then maybe a reshape and a second Gemm: the segments the fusion code folds.
    The family notes a per-channel-sized scale on another axis than the channels (what a fold must not mistake)."""
    conv = rng.random() < 0.6
    if conv:
        c_in, c_out = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        per_sample = (c_in, *(int(d) for d in rng.integers(1, 6, size=int(rng.integers(1, 3)))))
        g = examples.Graph(rng, per_sample)
        k = [int(rng.integers(1, 4)) for _ in per_sample[1:]]
        pads = [(kk - 1) // 2 for kk in k] + [kk // 2 for kk in k]  # "same" size
        y = g.node("Conv", ["x", g.const(examples.values(rng, (c_out, c_in, *k)))], pads=pads)
        out_shape = (1, c_out, *per_sample[1:])
    else:
        n, c_out = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        g = examples.Graph(rng, (n,))
        y = g.node("Gemm", ["x", g.const(examples.values(rng, (n, c_out)))])
        out_shape = (1, c_out)
    families = []
    for _ in range(int(rng.integers(1, 4))):
        kind = examples.pick(rng, ["Mul", "Div", "Add", "BatchNormalization"])
        if kind == "BatchNormalization":
            params = [examples.values(rng, (c_out,)) for _ in range(3)] + [abs(examples.values(rng, (c_out,))) + 0.1]
            y = g.node(kind, [y, *map(g.const, params)])
            families.append("bn")
            continue
        shape = examples.broadcastable(rng, out_shape)
        value = examples.values(rng, shape)
        if kind == "Div":
            value = np.where(value == 0, np.float32(1.0), value)
        y = g.node(kind, [y, g.const(value)])
        misplaced = conv and math.prod(shape) == c_out > 1 and (len(shape) < len(out_shape) - 1 or shape[
            len(shape) - len(out_shape) + 1] != c_out)
        families.append(f"{kind.lower()}{list(shape)}" + (" misplaced per-channel size" if misplaced else ""))
    if rng.random() < 0.4:
        y = g.node("Flatten", [y])
        if rng.random() < 0.5:
            y = g.node("Gemm", [y, g.const(examples.values(rng, (math.prod(out_shape), int(rng.integers(1, 4)))))])
    return examples.Example(g.model(y), ("conv" if conv else "gemm") + ", " + ", ".join(families))


def dag_example(rng):
    """Two branches of short chains (dense layers, activations, scales) from the same x, or one branch and x,
    joined by Add, Sub, Concat, Max or Sum: residual sums, concatenations, shared inputs."""
    n = int(rng.integers(1, 6))
    g = examples.Graph(rng, (n,))

    def chain(start: str) -> str:
        y = start
        for _ in range(int(rng.integers(0, 4))):
            op = examples.pick(rng, ["Gemm", "Relu", "Tanh", "LeakyRelu", "Mul", "Sigmoid"])
            if op == "Gemm":
                y = g.node(op, [y, g.const(examples.values(rng, (n, n)))])
            elif op == "Mul":
                y = g.node(op, [y, g.const(examples.values(rng, (n,)))])
            else:
                y = g.node(op, [y])
        return y

    shared = chain("x") if rng.random() < 0.3 else "x"
    a, b = chain(shared), chain(shared)
    join = examples.pick(rng, ["Add", "Sub", "Concat", "Max", "Sum"])
    out = g.node(join, [a, b], **({"axis": -1} if join == "Concat" else {}))
    return examples.Example(g.model(out), join.lower() + (", shared prefix" if shared != "x" else ""))


COMPOSED = {"fused": fused_example, "dag": dag_example}
