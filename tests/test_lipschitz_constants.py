"""Each activation / pooling / normalisation constant: sampled Jacobian norms never exceed it, and come within 5%
of it where the constant is tight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from certify.lipschitz import LipschitzContext, constants
from certify.ops import activations, normalization, pooling, registry
from certify.ops.base import NodeView

D = torch.float64
GRID = torch.linspace(-12.0, 12.0, 120_001, dtype=D)


def sampled_slopes(fn) -> torch.Tensor:
    x = GRID.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g.detach()


ACTIVATIONS = [
    ("Relu", {}, torch.relu),
    ("LeakyRelu", {"alpha": 0.1}, lambda x: F.leaky_relu(x, 0.1)),
    ("LeakyRelu", {"alpha": -3.0}, lambda x: torch.where(x < 0, -3.0 * x, x)),
    ("Sigmoid", {}, torch.sigmoid),
    ("Tanh", {}, torch.tanh),
    ("Elu", {"alpha": 1.0}, F.elu),
    ("Elu", {"alpha": 2.5}, lambda x: F.elu(x, 2.5)),
    ("Selu", {}, F.selu),
    ("Celu", {"alpha": 0.5}, lambda x: F.celu(x, 0.5)),
    ("Gelu", {}, F.gelu),
    ("Gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("Mish", {}, F.mish),
    ("HardSwish", {}, F.hardswish),
    ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, lambda x: torch.clamp(0.2 * x + 0.5, 0, 1)),
    ("Softplus", {}, F.softplus),
    ("Clip", {}, lambda x: torch.clamp(x, -1, 1)),
    ("Softsign", {}, F.softsign),
    ("Erf", {}, torch.erf),
]


def operator(op: str, opset: int = 20, **attrs):
    """The converted operator ``op`` with ``attrs`` (Clip with its constant bounds -1, 1)."""
    constants_ = {"lo": np.float32(-1.0), "hi": np.float32(1.0)} if op == "Clip" else {}
    inputs = ["x", "lo", "hi"] if op == "Clip" else ["x"]
    node = NodeView("n", op, opset, attrs, inputs, ["y"], constants=constants_)
    return registry.lookup(op, opset)(node)


def activation_rule(op: str, **attrs):
    """The operator's own rule on a 1-D input of 3 entries (an ``Activation``: slope range and bound)."""
    ctx = LipschitzContext(norm="l2", node="n", op_type=op, input_shapes=[(3,)], output_shapes=[(3,)],
                           constants=[None])
    return operator(op, **attrs).lipschitz(ctx)


@pytest.mark.parametrize(("op", "attrs", "fn"), ACTIVATIONS, ids=[f"{a[0]}{a[1]}" for a in ACTIVATIONS])
def test_activation_constant_is_sound_and_tight(op, attrs, fn):
    slopes = sampled_slopes(fn)
    rule = activation_rule(op, **attrs)
    slope, bound = rule.slope, rule.bound
    assert bound.upper == slope.lipschitz
    assert float(slopes.abs().max()) <= bound.upper
    assert float(slopes.min()) >= slope.lo and float(slopes.max()) <= slope.hi
    if op not in ("Softplus",):  # softplus approaches 1 only as x -> inf
        assert float(slopes.abs().max()) >= 0.95 * bound.upper
    assert bound.lower <= bound.upper


def test_named_constants_match_the_literature():
    assert constants.GELU_SLOPE.lipschitz == pytest.approx(1.1289, abs=1e-4)
    assert constants.SILU_SLOPE.lipschitz == pytest.approx(1.0998, abs=1e-4)
    assert constants.MISH_SLOPE.lipschitz == pytest.approx(1.0885, abs=1e-4)
    assert activation_rule("HardSwish").slope.lipschitz == 1.5
    assert activation_rule("LeakyRelu", alpha=0.01).slope.lipschitz == 1.0
    ctx = LipschitzContext(norm="l2", node="n", op_type="PRelu", input_shapes=[(2,), (2,)], output_shapes=[(2,)],
                           constants=[None, torch.tensor([0.2, -1.5])])
    assert operator("PRelu").lipschitz(ctx).slope.lipschitz == 1.5


def test_silu_slope_is_sound_and_tight():
    """SiLU has no ONNX operator; its exported form ``x * sigmoid(x)`` is recognised with this range."""
    slopes = sampled_slopes(F.silu)
    assert constants.SILU_SLOPE.lo <= float(slopes.min()) and float(slopes.max()) <= constants.SILU_SLOPE.hi
    assert float(slopes.abs().max()) >= 0.99 * constants.SILU_SLOPE.lipschitz


def test_not_lipschitz_activations_are_unbounded_with_a_reason():
    for op in ("Exp", "Log", "Sqrt", "Reciprocal"):
        rule = activation_rule(op)
        assert rule.slope is None and rule.bound.upper is None and rule.bound.reason


def jacobian_norm(fn, x: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(fn, x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jac, ord=2))


def test_softmax_constant_half():
    gen = torch.Generator().manual_seed(0)
    bound = activations.softmax_bound(6)
    worst = 0.0
    for scale in (0.1, 1.0, 5.0, 30.0):
        for _ in range(40):
            x = torch.randn(6, generator=gen, dtype=D) * scale
            worst = max(worst, jacobian_norm(lambda z: torch.softmax(z, 0), x))
    assert worst <= bound.upper
    near_pair = torch.tensor([10.0, 10.0, -10.0, -10.0, -10.0, -10.0], dtype=D)
    assert jacobian_norm(lambda z: torch.softmax(z, 0), near_pair) >= 0.95 * bound.upper


def test_log_softmax_constant_sqrt_n():
    n = 5
    bound = activations.log_softmax_bound(n)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = torch.randn(n, generator=gen, dtype=D) * 10
        assert jacobian_norm(lambda z: torch.log_softmax(z, 0), x) <= bound.upper
    vertex = torch.tensor([40.0, 0.0, 0.0, 0.0, 0.0], dtype=D)
    assert jacobian_norm(lambda z: torch.log_softmax(z, 0), vertex) >= 0.95 * bound.upper
    assert bound.upper == pytest.approx(math.sqrt(n))


def test_overlapping_maxpool_is_two_not_one():
    bound = pooling.maxpool_bound((1, 13, 13), (1, 6, 6), kernel=[3, 3], strides=[2, 2])
    assert bound.upper == pytest.approx(2.0)
    gen = torch.Generator().manual_seed(2)

    def pool(z):
        return F.max_pool2d(z.reshape(1, 1, 13, 13), 3, 2)

    for _ in range(20):
        assert jacobian_norm(pool, torch.randn(169, generator=gen, dtype=D)) <= bound.upper
    spike = -torch.ones(13, 13, dtype=D)
    spike[6, 6] = 5.0  # the max of the four windows that read it
    assert jacobian_norm(pool, spike.reshape(-1)) >= 0.95 * bound.upper
    # non-overlapping windows: 1
    assert pooling.maxpool_bound((1, 8, 8), (1, 4, 4), [2, 2], [2, 2]).upper == pytest.approx(1.0)


def explicit_norm(fn, shape) -> float:
    n = int(np.prod(shape))
    cols = fn(torch.eye(n, dtype=D).reshape(n, *shape)).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols.T, ord=2))


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize(("size", "kernel", "stride", "pad", "ceil"), [(9, 3, 2, 1, False), (8, 3, 3, 1, True),
                                                                       (7, 2, 1, 0, False)])
def test_average_pool_kronecker_norm_is_exact(include_pad, size, kernel, stride, pad, ceil):
    def pool(z):
        return F.avg_pool2d(z.reshape(-1, 1, size, size), kernel, stride, pad, ceil_mode=ceil,
                            count_include_pad=include_pad)

    out = pool(torch.zeros(1, size * size, dtype=D)).shape[2:]
    bound = pooling.avgpool_bound((1, size, size), (1, *out), [kernel, kernel], [stride, stride], [pad] * 4,
                                    count_include_pad=include_pad)
    assert bound.upper == pytest.approx(explicit_norm(pool, (1, size, size)), rel=1e-9)
    assert bound.lower <= explicit_norm(pool, (1, size, size)) <= bound.upper


def test_global_average_pool():
    bound = pooling.global_avgpool_bound((3, 4, 5))
    assert bound.upper == pytest.approx(explicit_norm(lambda z: z.reshape(-1, 3, 20).mean(2), (3, 4, 5)))


def test_batchnorm_constant():
    gamma, var = np.array([0.5, -3.0, 1.0]), np.array([1.0, 4.0, 0.01])
    bound = normalization.batchnorm_bound(gamma, var, 1e-5)
    assert bound.upper == pytest.approx(max(abs(gamma) / np.sqrt(var + 1e-5)))
    assert bound.upper >= bound.lower


def lrn(z, size, alpha, beta, bias):
    return F.local_response_norm(z.reshape(1, -1, 1, 1), size, alpha, beta, bias).reshape(-1)


@pytest.mark.parametrize(("size", "alpha", "beta", "bias"), [(5, 1e-4, 0.75, 1.0), (3, 1.0, 0.75, 2.0),
                                                              (5, 2.0, 1.5, 1.0)])
def test_lrn_bound_is_never_exceeded_by_a_search(size, alpha, beta, bias):
    bound = normalization.lrn_bound(size, alpha, beta, bias)
    channels = 8
    gen = torch.Generator().manual_seed(3)
    peak = math.sqrt(size / alpha * bias / beta)  # |x| where S = k (beta+1)/beta for one active channel
    worst = 0.0
    for scale in (0.0, 0.3 * peak, peak, 3 * peak):
        for _ in range(5):
            x = torch.randn(channels, generator=gen, dtype=D) * scale
            for _ in range(6):  # ascent on ||J|| along the top singular vector
                x = x.detach().requires_grad_(True)
                jac = torch.autograd.functional.jacobian(lambda z: lrn(z, size, alpha, beta, bias), x,
                                                         create_graph=True)
                value = torch.linalg.matrix_norm(jac, ord=2)
                worst = max(worst, float(value.detach()))
                (g,) = torch.autograd.grad(value, x)
                x = x + 0.05 * peak * g / (g.norm() + 1e-12)
    assert worst <= bound.upper
    assert bound.lower <= worst + 1e-12  # k^-beta at x = 0


def test_lrn_with_negative_alpha_is_unbounded_and_zero_alpha_is_a_scale():
    # alpha < 0: S = k + (alpha/n) sum x^2 reaches 0 at |x| = sqrt(n k / -alpha), where y blows up
    assert normalization.lrn_bound(3, -0.5, 0.75, 1.0).upper is None
    x = torch.tensor([math.sqrt(3 * 1.0 / 0.5) * 0.999, 0.0, 0.0], dtype=D, requires_grad=True)
    (slope,) = torch.autograd.grad(lrn(x, 3, -0.5, 0.75, 1.0)[0], x)
    assert float(slope[0]) > 10
    assert normalization.lrn_bound(3, 0.0, 0.5, 4.0).upper == pytest.approx(0.5)
    assert normalization.lrn_bound(3, 1.0, 1000.0, 0.1).upper is None  # 0.1^-1000 overflows: unbounded, no crash


def test_layernorm_bound_and_unbounded_tiny_eps():
    bound = normalization.layernorm_bound(6, np.ones(6), 1e-2)
    gen = torch.Generator().manual_seed(4)
    for scale in (1e-3, 0.05, 1.0):
        for _ in range(20):
            x = torch.randn(6, generator=gen, dtype=D) * scale
            assert jacobian_norm(lambda z: F.layer_norm(z, (6,), eps=1e-2), x) <= bound.upper
    assert normalization.layernorm_bound(6, np.ones(6), 0.0).upper is None


def test_selection_and_round_up():
    assert constants.selection_bound(4).upper == pytest.approx(2.0)
    assert constants.selection_bound(4, norm="linf").upper == pytest.approx(1.0)
    assert constants.round_up(1.0) > 1.0
