"""Local bound propagation: every relaxation's bounds hold at sampled and attacked points of the region, for
every tensor of small real ONNX graphs (chains, residual and concat DAGs, conv + batchnorm + pooling), both norms;
CROWN is tighter than IBP on chains, alpha-CROWN never looser than CROWN, certified samples survive PGD, and an
operator without a relaxation is named in a typed error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from certify.attacks import build_attack
from certify.attacks.batching import AttackRunner
from certify.attacks.box import Box
from certify.convert import to_torch
from certify.local.bounds import Propagation, float64_graph
from certify.local.region import Region
from certify.local.rules import UnsupportedOperator
from certify.local.samples import certified_radii, certify_samples, margin_spec
from tests.onnx_builders import const_tensor

DIGITS = "examples/digits_mlp.onnx"
HYP = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Net:
    """A tiny ONNX graph built node by node with random float32 weights."""

    def __init__(self, shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.shape = list(shape)
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, array) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(const_tensor(name, np.asarray(array)))
        return name

    def weight(self, *shape, scale=0.6) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def add(self, op, inputs, **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{op}_{self.count}", **attrs))
        return out

    def graph(self, output: str, opset: int = 17):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape[1:]])
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, "g", [x], [y], initializer=self.inits)
        return to_torch(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def _points(region: Region, count: int, gen: torch.Generator) -> torch.Tensor:
    """Random points of the region (uniform in the box, then projected into the L2 ball), vertices included."""
    n = region.lower.shape[0]
    u = torch.rand((count, *region.lower.shape), generator=gen, dtype=torch.float64)
    u[: count // 3] = u[: count // 3].round()  # box vertices
    pts = region.lower + u * (region.upper - region.lower)
    if region.norm == "l2":
        d = (pts - region.center).flatten(2)
        scale = (region.eps / d.norm(dim=-1).clamp(min=1e-12)).clamp(max=1.0)
        pts = region.center + (d * scale.unsqueeze(-1)).reshape(pts.shape)
        pts = torch.minimum(torch.maximum(pts, region.lower), region.upper)
    return pts.reshape(count * n, *region.lower.shape[1:])


def _attack_points(graph, region: Region, names, gen, steps=8) -> list[torch.Tensor]:
    """PGD points pushing a random signed sum of every tensor up (a sign-gradient walk projected on the box)."""
    out = []
    for sign in (1.0, -1.0):
        x = region.midpoint.clone()
        weights = None
        for _ in range(steps):
            x.requires_grad_(True)
            _, env = graph.run(x, keep=True)
            if weights is None:
                weights = {n: torch.randn(env[n].shape, generator=gen, dtype=torch.float64) for n in names}
            total = sum((weights[n] * env[n]).sum() for n in names)
            (grad,) = torch.autograd.grad(sign * total, x)
            step = (region.upper - region.lower) / 4
            x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), region.lower), region.upper)
            if region.norm == "l2":
                d = (x - region.center).flatten(1)
                scale = (region.eps / d.norm(dim=-1).clamp(min=1e-12)).clamp(max=1.0)
                x = region.center + (d * scale.unsqueeze(-1)).reshape(x.shape)
        out.append(x.detach())
    return out


def assert_sound(module, x, eps, norm="linf", input_range=(0.0, 1.0), seed=0):
    """Every varying tensor's IBP, CROWN and alpha-CROWN boxes, and the bounds of random specifications, contain
    the values at sampled and attacked points."""
    graph = float64_graph(module)
    region = Region.ball(torch.as_tensor(x, dtype=torch.float64), eps, norm, input_range)
    gen = torch.Generator().manual_seed(seed)
    ibp = Propagation(graph, region, "ibp")
    crown = Propagation(graph, region, "crown")
    tuned = Propagation(graph, region, "crown", alpha_steps=4)
    names = [n for n in crown.bounds if n != crown.input_name]
    n = region.lower.shape[0]
    points = [_points(region, 30, gen)] + _attack_points(graph, region, names, gen)
    out_shape = crown.bounds[crown.output_name].lo.shape[1:]
    spec = torch.randn((3, n, *out_shape), generator=gen, dtype=torch.float64)
    lowers = {"crown": crown.lower(spec), "alpha": crown.lower(spec, alpha_steps=8), "ibp": ibp.lower(spec),
              "alpha, optimised intermediate bounds": tuned.lower(spec)}
    assert bool((lowers["alpha"] >= lowers["crown"]).all())
    for pts in points:
        with torch.no_grad():
            _, env = graph.run(pts, keep=True)
        for prop in (ibp, crown, tuned):
            for name in names:
                box = prop.bounds[name]
                value = env[name].reshape(-1, *box.lo.shape)
                tol = 1e-9 * (1 + value.abs())
                assert bool((value >= box.lo - tol).all()), f"{prop.method} lower bound of {name} violated"
                assert bool((value <= box.hi + tol).all()), f"{prop.method} upper bound of {name} violated"
        y = env[crown.output_name].reshape(-1, n, *out_shape)
        values = (spec.unsqueeze(1) * y.unsqueeze(0)).flatten(3).sum(-1)  # (S, points, N)
        for method, low in lowers.items():
            assert bool((values >= low.unsqueeze(1) - 1e-9).all()), f"{method} specification bound violated"
    return ibp, crown


# --- relaxations, one family at a time ------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=st.integers(1, 7), trans_b=st.booleans(), alpha=st.sampled_from([1.0, -0.5, 2.0]),
       norm=st.sampled_from(["linf", "l2"]), eps=st.sampled_from([0.1, 0.5]), seed=st.integers(0, 99))
def test_dense_chain_with_each_activation_is_sound(act, hidden, trans_b, alpha, norm, eps, seed):
    net = Net((2, 5), seed)
    w = net.weight(*((hidden, 5) if trans_b else (5, hidden)), scale=2.0)
    h = net.add("Gemm", ["x", w, net.weight(hidden)], transB=int(trans_b), alpha=alpha)
    if act == "PRelu":
        h = net.add("PRelu", [h, net.weight(hidden, scale=1.5)])
    elif act == "LeakyRelu":
        h = net.add("LeakyRelu", [h], alpha=float(net.rng.choice([0.1, -0.3, 1.7])))
    else:
        h = net.add(act, [h])
    h = net.add("MatMul", [h, net.weight(hidden, 4)])
    h = net.add("Relu", [net.add("Div", [net.add("Mul", [h, net.weight(4)]), net.const(np.float32(-1.5))])])
    out = net.add("Sub", [net.const(np.float32(0.5)), net.add("Gemm", [h, net.weight(3, 4), net.weight(3)],
                                                                transB=1)])
    x = net.rng.uniform(0, 1, (2, 5)).astype(np.float32)
    assert_sound(net.graph(out), x, eps, norm, seed=seed)


@HYP
@given(channels=st.integers(1, 3), kernel=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1),
       dilation=st.integers(1, 2), pool=st.sampled_from(["MaxPool", "AveragePool"]), ceil=st.booleans(),
       norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 99))
def test_conv_batchnorm_pool_chain_is_sound(channels, kernel, stride, pad, dilation, pool, ceil, norm, seed):
    net = Net((2, 2, 7, 7), seed)
    h = net.add("Conv", ["x", net.weight(channels, 2, kernel, kernel), net.weight(channels)], strides=[stride] * 2,
                pads=[pad, 0, pad, pad], dilations=[dilation] * 2)
    bn = [net.weight(channels), net.weight(channels), net.weight(channels),
          net.const(net.rng.uniform(0.5, 2, channels).astype(np.float32))]
    h = net.add("Relu", [net.add("BatchNormalization", [h, *bn], epsilon=1e-3)])
    h = net.add(pool, [h], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1], ceil_mode=int(ceil))
    h = net.add("ConvTranspose", [h, net.weight(channels, 2, 2, 2)], strides=[2, 2], pads=[0, 1, 1, 0])
    h = net.add("GlobalAveragePool", [net.add("Tanh", [h])])
    out = net.add("Gemm", [net.add("Flatten", [h]), net.weight(3, 2), net.weight(3)], transB=1)
    x = net.rng.uniform(0, 1, (2, 2, 7, 7)).astype(np.float32)
    assert_sound(net.graph(out), x, 0.1, norm, seed=seed)


@HYP
@given(norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 99), split=st.integers(1, 5))
def test_residual_concat_and_shape_dag_is_sound(norm, seed, split):
    net = Net((2, 6), seed)
    a = net.add("Relu", [net.add("Gemm", ["x", net.weight(6, 6), net.weight(6)])])
    b = net.add("Add", [a, net.add("Gemm", [a, net.weight(6, 6), net.weight(6)])])  # a read twice: residual
    b = net.add("Sub", [b, net.add("Relu", [a])])
    c = net.add("Concat", [b, net.add("Identity", [net.add("Dropout", [a])])], axis=1)  # N x 12
    r = net.add("Reshape", [c, net.const(np.array([-1, 2, 6], np.int64))])
    t = net.add("Transpose", [r], perm=[0, 2, 1])
    s = net.add("Slice", [t, net.const(np.array([0, 0], np.int64)), net.const(np.array([split + 1, 2], np.int64)),
                          net.const(np.array([1, 2], np.int64))])
    p = net.add("Pad", [s, net.const(np.array([0, 1, 0, 0, 2, 0], np.int64)), net.const(np.float32(0.25))])
    f = net.add("Flatten", [net.add("Relu", [p])])
    out = net.add("MatMul", [f, net.weight(2 * (split + 4), 3)])
    x = net.rng.uniform(0, 1, (2, 6)).astype(np.float32)
    assert_sound(net.graph(out), x, 0.2, norm, seed=seed)


def test_box_region_and_the_digits_network_are_sound():
    module = to_torch(onnx.load(DIGITS))
    x = np.load("examples/digits_test.npz")["x"][:4]
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        assert_sound(module, x, eps, norm)


# --- tightness --------------------------------------------------------------------------------------------------

def test_crown_is_tighter_than_interval_bounds_on_chains():
    module = to_torch(onnx.load(DIGITS))
    x = torch.tensor(np.load("examples/digits_test.npz")["x"][:32], dtype=torch.float64)
    graph = float64_graph(module)
    region = Region.ball(x, 0.05)
    ibp, crown = Propagation(graph, region, "ibp"), Propagation(graph, region, "crown")
    for name in crown.bounds:
        wi = (ibp.bounds[name].hi - ibp.bounds[name].lo).sum()
        wc = (crown.bounds[name].hi - crown.bounds[name].lo).sum()
        assert wc <= wi + 1e-9
    out = crown.output_name
    eye = torch.eye(10, dtype=torch.float64).unsqueeze(1).expand(10, 32, 10)
    raw = crown.linear_lower(out, eye)
    assert bool((raw > ibp.interval_lower(eye)).float().mean() > 0.9)
    spec = margin_spec(torch.as_tensor(np.load("examples/digits_test.npz")["y"][:32]), 10)
    assert bool((crown.lower(spec, alpha_steps=10) >= crown.lower(spec)).all())
    assert float((crown.lower(spec, alpha_steps=10) - crown.lower(spec)).max()) > 0


# --- verdicts ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_certified_samples_survive_a_strong_attack(norm, eps):
    module = to_torch(onnx.load(DIGITS))
    data = np.load("examples/digits_test.npz")
    x, y = data["x"][:120], data["y"][:120]
    v = certify_samples(module, x, y, eps, norm, skip_certified=False, alpha_steps=10)
    assert v.accuracy("crown") > 0 and v.accuracy("alpha-crown") >= v.accuracy("crown")
    assert v.accuracy("ibp") <= v.accuracy("crown")
    assert all(v.accuracy(m) <= float(v.correct.mean()) for m in v.methods)
    chosen = np.nonzero(v.any_certified)[0]
    runner = AttackRunner(module, Box(0.0, 1.0), device=torch.device("cpu"))
    xs, ys = torch.tensor(x[chosen]), torch.tensor(y[chosen])
    adv = runner.run(build_attack("pgd", steps=60, restarts=2), xs, ys, norm, eps)
    assert bool((runner.predict(adv) == ys).all())
    rows = v.per_sample()
    assert rows[int(chosen[0])]["best"] in v.methods
    assert all(r["best"] is None for r, ok in zip(rows, v.correct) if not ok)


def test_skipping_certified_samples_keeps_the_verdicts_and_budget_skips_methods():
    module = to_torch(onnx.load(DIGITS))
    data = np.load("examples/digits_test.npz")
    x, y = data["x"][:60], data["y"][:60]
    full = certify_samples(module, x, y, 0.03, skip_certified=False, alpha_steps=5)
    quick = certify_samples(module, x, y, 0.03, alpha_steps=5)
    assert np.array_equal(full.any_certified, quick.any_certified)
    assert quick.ran["crown"].sum() <= full.ran["crown"].sum()
    assert not np.any(quick.ran["crown"] & quick.certified["ibp"])
    none = certify_samples(module, x, y, 0.03, time_budget=0.0)
    assert not none.any_certified.any() and set(none.skipped) == set(none.methods)


def test_local_lipschitz_rows_stay_below_global_and_radii_are_capped():
    module = to_torch(onnx.load(DIGITS))
    data = np.load("examples/digits_test.npz")
    v = certify_samples(module, data["x"][:50], data["y"][:50], 0.02, "l2", methods=("local-lipschitz",))
    assert len(v.layers) == 3
    for row in v.layers:
        assert row.local_mean <= row.local_max <= row.global_upper * (1 + 1e-6)
    ran = v.ran["local-lipschitz"]
    assert ran.any() and np.all(v.radius[ran] <= 0.02)
    assert np.array_equal(v.certified["local-lipschitz"][ran], v.radius[ran] >= 0.02)


def test_local_lipschitz_is_skipped_on_graphs_that_are_not_dense_chains():
    net = Net((1, 1, 4, 4))
    h = net.add("Relu", [net.add("Conv", ["x", net.weight(2, 1, 3, 3)])])
    out = net.add("Gemm", [net.add("Flatten", [h]), net.weight(3, 8), net.weight(3)], transB=1)
    module = net.graph(out)
    x = np.full((1, 1, 4, 4), 0.5, np.float32)
    label = int(module(torch.tensor(x)).argmax())
    v = certify_samples(module, x, [label], 0.01, skip_certified=False)
    assert "Conv" in v.skipped["local-lipschitz"] and not v.ran["local-lipschitz"].any()
    assert v.ran["crown"].all() and v.ran["alpha-crown"].all()
    summary = v.summary()
    assert summary["skipped"]["local-lipschitz"] and set(summary["methods"]) == set(v.methods)
    assert certified_radii([v])[0] in (0.0, 0.01)


# --- errors -----------------------------------------------------------------------------------------------------

def test_unsupported_operator_is_named():
    net = Net((1, 3))
    h = net.add("Exp", [net.add("Gemm", ["x", net.weight(3, 3)])])
    module = net.graph(net.add("Gemm", [h, net.weight(3, 2)]))
    with pytest.raises(UnsupportedOperator) as err:
        certify_samples(module, np.zeros((1, 3), np.float32), [0], 0.1)
    assert err.value.node == "Exp_3" and err.value.code == "local_unsupported" and "Exp_3" in str(err.value)


def test_product_of_two_varying_tensors_is_refused():
    net = Net((1, 3))
    h = net.add("Gemm", ["x", net.weight(3, 3)])
    module = net.graph(net.add("Mul", [h, h]))
    with pytest.raises(UnsupportedOperator, match="two varying"):
        Propagation(float64_graph(module), Region.ball(torch.zeros(1, 3), 0.1))


def test_bad_arguments_are_refused():
    module = to_torch(onnx.load(DIGITS))
    with pytest.raises(ValueError, match="norm"):
        certify_samples(module, np.zeros((1, 64), np.float32), [0], 0.1, norm="l1")
    with pytest.raises(ValueError, match="unknown local methods"):
        certify_samples(module, np.zeros((1, 64), np.float32), [0], 0.1, methods=("milp",))
    with pytest.raises(ValueError, match="labels"):
        certify_samples(module, np.zeros((2, 64), np.float32), [0], 0.1)
    with pytest.raises(ValueError, match="eps"):
        Region.ball(torch.zeros(1, 2), -0.1)
    with pytest.raises(ValueError, match="input range"):
        Region.ball(torch.full((1, 2), 2.0), 0.1)


def test_cast_to_an_integer_type_is_refused():
    net = Net((1, 3))
    h = net.add("Cast", [net.add("Gemm", ["x", net.weight(3, 3)])], to=TensorProto.INT64)
    with pytest.raises(UnsupportedOperator, match="integer"):
        Propagation(float64_graph(net.graph(h)), Region.ball(torch.zeros(1, 3), 0.1))


@pytest.mark.parametrize("to", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_cast_to_a_coarser_float_is_refused(to):
    """float16 rounding moves values by up to 2^-11 relative: treating it as the identity would not be sound."""
    net = Net((1, 3))
    h = net.add("Cast", [net.add("Gemm", ["x", net.weight(3, 3)])], to=to)
    with pytest.raises(UnsupportedOperator, match="coarser"):
        Propagation(float64_graph(net.graph(h)), Region.ball(torch.zeros(1, 3), 0.1))
