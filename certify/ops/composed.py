"""Instance generators of composed families for the soundness harness (``certify.lipschitz.soundness``): fused
linear segments (Conv / Gemm followed by scale-like operators on every axis), small DAGs (residual sums,
concatenations, shared prefixes) and pooled convolution blocks (Conv, activations, LRN, overlapping MaxPool), next
to the per-operator generators they are built from."""

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


def pooled_example(rng):
    """One or two blocks Conv -> maybe an activation -> maybe LRN -> MaxPool whose windows overlap unevenly (the
    joint bound of certify.lipschitz.pooled), with random pads, strides and dilations, then maybe a Gemm."""
    spatial = tuple(int(d) for d in rng.integers(5, 10, size=int(rng.integers(1, 3))))
    channels = int(rng.integers(1, 4))
    g = examples.Graph(rng, (channels, *spatial))
    y, shape, families = "x", (channels, *spatial), []
    for _ in range(int(rng.integers(1, 3))):
        out = int(rng.integers(1, 5))
        k = [int(rng.integers(1, 4)) for _ in spatial]
        y = g.node("Conv", [y, g.const(examples.values(rng, (out, shape[0], *k)))],
                   pads=[kk // 2 for kk in k] + [(kk - 1) // 2 for kk in k])
        act = examples.pick(rng, ["Relu", "LeakyRelu", "Tanh", None])
        if act:
            y = g.node(act, [y])
        if rng.random() < 0.3:
            y = g.node("LRN", [y], size=int(rng.integers(1, 4)), alpha=float(rng.uniform(0.01, 1)), beta=0.75,
                       bias=1.0)
        kernel = [int(rng.integers(2, 5)) for _ in spatial]
        strides = [int(rng.integers(1, kk)) + (rng.random() < 0.2) for kk in kernel]
        pads = [int(rng.integers(0, kk)) for kk in kernel] * 2
        dil = [int(rng.integers(1, 3)) if rng.random() < 0.2 else 1 for _ in spatial]
        inner = tuple(shape[1 + i] + 2 * (k[i] // 2) - k[i] + 1 for i in range(len(spatial)))
        if any(n + 2 * p < d * (kk - 1) + 1 for n, p, d, kk in zip(inner, pads, dil, kernel)):
            dil = [1] * len(spatial)
        y = g.node("MaxPool", [y], kernel_shape=kernel, strides=strides, pads=pads, dilations=dil)
        shape = (out, *((n + 2 * p - d * (kk - 1) - 1) // st + 1
                        for n, p, d, kk, st in zip(inner, pads, dil, kernel, strides)))
        families.append(f"k{kernel} s{strides}" + (f" {act.lower()}" if act else ""))
        if min(shape[1:]) < 3:
            break
    if rng.random() < 0.5:
        y = g.node("Flatten", [y])
        y = g.node("Gemm", [y, g.const(examples.values(rng, (math.prod(shape), int(rng.integers(1, 4)))))])
    return examples.Example(g.model(y), ", ".join(families))


COMPOSED = {"fused": fused_example, "dag": dag_example, "pooled": pooled_example}
