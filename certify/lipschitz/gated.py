"""Gated activations exported as products (SiLU, GELU, Mish): ``Mul(x, g(x))`` recognised as one activation of
``x`` instead of the (unbounded) product of two input-dependent tensors."""

from __future__ import annotations

import copy

import torch

from certify.lipschitz import constants
from certify.lipschitz.rules import Activation, slope_bound
from certify.lipschitz.segments import NodeRecord

#: Exported forms of gated activations ``x * g(x)``: the gate's scalar function, the activation's slope range, a
#: factor on it, and whether that range came from a grid search (see ``constants``).
_GATED = (("SiLU (x * sigmoid x)", lambda t: t * torch.sigmoid(t), constants.SILU_SLOPE, 1.0, True),
          ("GELU (x * (1 + erf(x / sqrt 2)))", lambda t: 2.0 * torch.nn.functional.gelu(t), constants.GELU_SLOPE, 2.0,
           False),
          ("GELU (x * Phi(x))", torch.nn.functional.gelu, constants.GELU_SLOPE, 1.0, False),
          ("Mish (x * tanh softplus x)", torch.nn.functional.mish, constants.MISH_SLOPE, 1.0, True))


def _gate_chain(gate: str, source: str, producers: dict, env: dict) -> list | None:
    """The elementwise nodes computing ``gate`` from ``source`` (scalar constants only), or None."""
    chain, name = [], gate
    while name != source:
        if name not in producers or len(chain) > 6:
            return None
        module, inputs = producers[name]
        if not getattr(module, "gate_step", False):  # a scalar elementwise op (``OnnxOp.gate_step``)
            return None
        runtime = [n for n in inputs if n and env.get(n) is not None and env[n].numel() != 1]
        if len(runtime) != 1 or any(n and env[n].numel() != 1 for n in inputs if n != runtime[0]):
            return None
        chain.append((module, inputs, runtime[0]))
        name = runtime[0]
    return chain[::-1]


def gated_activation(record: NodeRecord, producers: dict, env: dict):
    """``Mul(x, g(x))`` where ``g`` is a chain of scalar elementwise ops recognised as SiLU, GELU or Mish (their
    exported forms): then the node is that activation of ``x`` (checked on a grid against the closed form), with
    the one varying input ``x``. Returns ``(rule, [x])`` or None.

    The grid check tolerates float32 constants (``x / 1.4142135`` for ``x / sqrt 2``): each family ``x g(a x)``
    has the same slope range for every a > 0 (substitute y = a x in the derivative), so a slightly different
    scale leaves the constant unchanged."""
    if not getattr(record.module, "gate_product", False):  # a product of its inputs (``OnnxOp.gate_product``)
        return None
    for source, gate in (record.varying, record.varying[::-1]):
        chain = _gate_chain(gate, source, producers, env)
        if not chain:
            continue
        grid = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
        with torch.no_grad():
            values = _run_gate(chain, grid, env)
            product = grid * values
        for name, fn, slope, factor, searched in _GATED:
            if values.shape == grid.shape and torch.allclose(product, fn(grid), atol=1e-6, rtol=1e-5):
                scaled = constants.Slope(slope.lo * factor, slope.hi * factor)
                bound = slope_bound(slope, record.ctx.norm, name, searched)
                bound.upper, bound.lower = bound.upper * factor, bound.lower * factor
                bound.method = f"constant: {name}"
                return Activation(scaled, bound), [source]
    return None


def _run_gate(chain: list, grid: torch.Tensor, env: dict) -> torch.Tensor:
    """The gate's values on ``grid`` (float64, its scalar constants promoted)."""
    values = grid
    for module, inputs, runtime in chain:
        args = [values if n == runtime else (env[n].double() if n and env[n].is_floating_point() else
                                              (env[n] if n else None)) for n in inputs]
        values = copy.deepcopy(module).double()(*args).reshape(-1)
    return values
