"""A bound on the floating-point error of the network's own forward pass, over a ball around each sample.

The Lipschitz bounds hold for real arithmetic on the stored weights, but the classifier runs in float32 (or the
input's float type). For every tensor t and every x' with ``||x' - x||_2 <= r`` we bound the L2 norm of
``delta_t(x') = fl(t)(x') - t(x')`` by ``a_t + b_t r`` (standard forward error analysis, Higham, "Accuracy and
Stability of Numerical Algorithms", 3.1 and 3.5):

- a node maps the incoming errors through its own Lipschitz bound (the float node and the exact node see inputs
  ``delta`` apart) and adds its local rounding ``|fl(g(z)) - g(z)|``;
- an affine node ``A z + c`` with at most n terms per output has local rounding ``<= gamma_{n+2} (|A| |z| + |c|)``,
  ``gamma_k = k u / (1 - k u)``, so in L2 ``<= gamma_{n+2} (|||A||| M_z + ||c||)`` with ``|||A||| <=
  sqrt(max row sum * max column sum)`` of ``|A|``;
- copies, max/min selections and ReLU-like maps are exact; a sum of k tensors rounds by ``gamma_k``;
- other nonlinear operators (library functions: exp, tanh, erf, softmax, normalisations, and gated activations
  ``x * g(x)`` as a whole) are modelled as accurate to ``LIBRARY_ULPS`` ulps of ``max(|in|, |out|)`` per term they
  combine. This is the one assumption not derived here.

``M_t``, the largest ``||fl(t)||`` over the ball, is ``||fl(t)(x)|| + L_t r + 2 (a_t + b_t r)`` (``L_t`` the
composed L2 bound of input -> t). Everything is affine in r because the propagation is positively homogeneous and
subadditive; second-order terms are kept (``M`` includes the errors). The result for the logits, ``(a, b)`` per
sample, enters the certified radius in :mod:`certify.lipschitz.certificate`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from certify.lipschitz import batch, network, rules
from certify.lipschitz.segments import NodeRecord

#: Accuracy assumed of a float library function, in ulps of max(|input|, |output|) (see the module docstring).
LIBRARY_ULPS = 16.0


def gamma(n: float, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n roundings."""
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


def unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2 if dtype.is_floating_point else 0.0


class ForwardError:
    """Per-node rounding models for one analysed graph (L2), evaluated per sample by :meth:`logits`."""

    def __init__(self, graph, analysis: network.Analysis):
        if analysis.norm != "l2":
            raise ValueError("the forward error is propagated with L2 bounds")
        self.graph, self.analysis = graph, analysis
        self.models = [self._model(record) for record in analysis.records]

    def _model(self, record: NodeRecord):
        """``(kind, n, |||A|||, ||c||)`` for the node's local rounding (see :meth:`_local`)."""
        rule, ctx = record.rule, record.ctx
        rounding = getattr(record.module, "float_rounding", None)  # ``OnnxOp.float_rounding``
        if not record.varying or rounding == "exact":  # the float result is the exact one on the same inputs
            return ("exact", 0, 0.0, 0.0)
        if isinstance(rule, rules.Combine):
            return ("sum", len(ctx.varying_inputs) + (rule.scale != 1.0), 0.0, 0.0)
        if isinstance(rule, rules.Linear) and len(record.varying) == 1:
            n_in = rules.numel(ctx.in_shape)
            if rule.kind == "dense":
                w = rule.weight.abs()
                return ("affine", w.shape[1], _abs_norm(w.sum(dim=1), w.sum(dim=0)), self._offset(record))
            if rule.kind == "conv":
                w = rule.weight.abs()
                dims = tuple(range(2, w.dim()))
                return ("affine", w[0].numel(), _abs_norm(w.sum(dim=(1, *dims)), w.sum(dim=(0, *dims))),
                        self._offset(record))
            if rule.kind in ("scale", "isometry"):  # up to 4 roundings (BatchNorm: subtract, scale, shift)
                return ("affine", 4, record.bound.upper, self._offset(record))
            # nonnegative coefficients: |A| = A, so |||A||| is the node's own L2 bound
            spread = 1.0 if rounding == "nonnegative" else math.sqrt(min(n_in, rules.numel(ctx.out_shape)))
            return ("affine", n_in, (record.bound.upper or 0.0) * spread, self._offset(record))
        size = max(rules.numel(ctx.in_shape), 1) if rounding != "elementwise" else 1
        return ("library", size, record.bound.upper or 0.0, 0.0)

    def _offset(self, record: NodeRecord) -> float:
        """``||c||`` of an affine node: its output at a zero varying input (bias, added constants)."""
        env = {n: t for n, t in zip(record.inputs, record.ctx.constants)}
        args = [torch.zeros((1, *record.ctx.input_shapes[i]), dtype=record.ctx.input_dtypes[i] or torch.float32)
                if record.ctx.varying(i) else env.get(n) for i, n in enumerate(record.inputs)]
        with torch.no_grad():
            out = record.module(*[a if n else None for a, n in zip(args, record.inputs)])
        out = out[0] if isinstance(out, (tuple, list)) else out
        return float(torch.linalg.vector_norm(out.double())) * (1 + 1e-6)

    def logits(self, x: torch.Tensor) -> tuple[float, float]:
        """``(a, b)``: the L2 norm of the float error of the output at any x' within L2 distance r of ``x`` (one
        sample, per-sample shape) is at most ``a + b r``. A graph that reshapes by a fixed batch runs at that
        batch, filled with copies of ``x``; it keeps its samples apart (checked by the analysis), so the first
        sample of every tensor computed from the input is ``x``'s own."""
        from certify.convert import pad_batch  # certify.convert imports the operators, which import this package

        size = batch.analysis_batch(self.graph)
        with torch.no_grad():
            _, env = self.graph.run(pad_batch(x.unsqueeze(0), size), keep=True)
        analysis = self.analysis
        a = {analysis.input_name: 0.0}
        b = {analysis.input_name: 0.0}

        def magnitude(name: str) -> tuple[float, float]:  # called for tensors computed from the input only
            value = env.get(name)
            if size > 1 and isinstance(value, torch.Tensor):
                value = value[0]
            m = float(torch.linalg.vector_norm(value.double())) if isinstance(value, torch.Tensor) else 0.0
            lip = analysis.composed.get(name)
            lip = math.inf if lip is None else lip
            return m * (1 + 1e-6) + 2 * a.get(name, 0.0), lip + 2 * b.get(name, 0.0)

        for record, (kind, n, abs_norm, offset) in zip(analysis.records, self.models):
            if not record.varying:
                continue
            moved = (network.propagate(record, a), network.propagate(record, b))
            moved = tuple(math.inf if v is None else v for v in moved)
            out = next((o for o in record.outputs if o), None)
            u = unit_roundoff(env[out].dtype) if isinstance(env.get(out), torch.Tensor) else 0.0
            local = self._local(record, kind, n, abs_norm, offset, u, magnitude, out)
            for o in record.outputs:
                if o:
                    a[o], b[o] = moved[0] + local[0], moved[1] + local[1]
        return a.get(analysis.output_name, math.inf), b.get(analysis.output_name, math.inf)

    @staticmethod
    def _local(record, kind, n, abs_norm, offset, u, magnitude, out) -> tuple[float, float]:
        """The node's own rounding, affine in r: ``(a, b)``."""
        if kind == "exact" or u == 0.0:
            return 0.0, 0.0
        ins = [magnitude(record.inputs[i]) for i in record.ctx.varying_inputs]
        if kind == "sum":  # a sum of k broadcast terms (and a division for Mean)
            factors = [network.broadcast_factor(record.ctx, i) for i in record.ctx.varying_inputs]
            g = gamma(n, u)
            return g * sum(f * m0 for f, (m0, _) in zip(factors, ins)), g * sum(f * m1 for f, (_, m1) in zip(factors,
                                                                                                            ins))
        m0, m1 = (sum(m[0] for m in ins), sum(m[1] for m in ins))
        if kind == "affine":
            g = gamma(n + 2, u)
            return g * (_times(abs_norm, m0) + offset), g * _times(abs_norm, m1)
        o0, o1 = magnitude(out)  # library functions: LIBRARY_ULPS per combined term, of max(|in|, |out|)
        g = gamma(LIBRARY_ULPS * (n + 1), u)
        return g * (m0 + o0), g * (m1 + o1)


def _times(a: float, b: float) -> float:
    """``a * b`` with ``0 * inf = 0`` (a zero operator adds no error, however large its input may grow)."""
    return 0.0 if a == 0 or b == 0 else a * b


def _abs_norm(row_sums: torch.Tensor, col_sums: torch.Tensor) -> float:
    """``||B||_2 <= sqrt(||B||_1 ||B||_inf)`` for ``B = |A|`` (Hoelder), with a float64 summation margin."""
    top = float(row_sums.max()) * float(col_sums.max()) if row_sums.numel() else 0.0
    return math.sqrt(top) * (1 + 1e-9)


def logit_errors(graph, analysis: network.Analysis, xs: torch.Tensor) -> np.ndarray:
    """``(n, 2)``: per sample, ``a`` and ``b`` of the float error bound ``a + b r`` on the logits (L2 norm)."""
    model = ForwardError(graph, analysis)
    return np.array([model.logits(x) for x in xs], dtype=np.float64).reshape(-1, 2)
