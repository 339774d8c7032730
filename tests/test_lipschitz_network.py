"""Whole networks: the network upper bound is never below a sampled ||J(x)||, the composed bound never above the
plain product, and certified samples are never flipped by probing inside their radius."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import certify
from certify.lipschitz import certificate, certified_radii, network_bound, pair_bounds
from certify.lipschitz.certificate import layer_rows
from certify.lipschitz.eclipse import eclipse_fast
from certify.lipschitz.empirical import jacobian_norms


def convert(model: nn.Module, shape, fold: bool = True) -> certify.OnnxGraph:
    """Export with the legacy exporter; ``fold=False`` keeps BatchNormalization nodes (no Conv+BN folding)."""
    buffer = io.BytesIO()
    torch.manual_seed(0)
    torch.onnx.export(model.eval(), torch.randn(1, *shape), buffer, dynamo=False, opset_version=13,
                      do_constant_folding=fold)
    return certify.to_torch(certify.load_onnx(buffer.getvalue()))


def sampled_max(graph, shape, count=12, scale=1.0, seed=0) -> float:
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn((count, *shape), generator=gen) * scale
    return float(jacobian_norms(graph, xs).max())


def check_sound(graph, shape, scale=1.0):
    analysis = network_bound(graph, shape)
    upper = analysis.composed[analysis.output_name]
    product = analysis.product[analysis.output_name]
    assert upper is not None and product is not None
    assert upper <= product * (1 + 1e-12)
    assert sampled_max(graph, shape, scale=scale) <= upper
    return analysis


def mlp(sizes, act=nn.ReLU):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def test_mlp_eclipse_bound_between_sample_and_product():
    torch.manual_seed(1)
    graph = convert(mlp([10, 64, 64, 5]), (10,))
    analysis = check_sound(graph, (10,))
    assert analysis.chains and analysis.chains[0].upper is not None
    upper, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    assert upper < 0.9 * product  # ECLipsE is strictly tighter on a random ReLU MLP


def test_mlp_with_sigmoid_and_tanh_uses_the_slope_ranges():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    check_sound(convert(model, (6,)), (6,), scale=3.0)


def test_eclipse_on_diagonal_network_is_exact_enough():
    # diagonal layers: the true constant is max_i prod_l |w_l,i| (attained with all slopes 1)
    d = [torch.diag(torch.tensor(v, dtype=torch.float64)) for v in ([2.0, 0.5, 1.0], [0.5, 3.0, 1.0], [1.0, 1.0, 4.0])]
    upper, _ = eclipse_fast(d)
    assert upper >= 4.0
    assert upper <= 2.0 * 0.5 * 1.0 + 3.0 * 1.0 * 4.0  # well below the product 2*3*4 = 24


def test_mlp_layer_rows_report_every_node():
    torch.manual_seed(3)
    graph = convert(mlp([8, 16, 4]), (8,))
    result = certificate(graph, (8,), ascent_steps=2)
    ops = [row["op"] for row in result["layers"]]
    assert ops == ["Gemm", "Relu", "Gemm"]
    for row in result["layers"]:
        assert row["upper"] >= row["lower"] > 0
    net = result["network"]
    assert net["lower"] <= net["upper"] <= net["product"]
    json.dumps(result)  # serialisable


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def randomise_batchnorm(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))


def test_cnn_with_batchnorm_and_overlapping_pool():
    torch.manual_seed(4)
    model = SmallCNN()
    randomise_batchnorm(model)
    graph = convert(model, (1, 13, 13), fold=False)
    analysis = check_sound(graph, (1, 13, 13))
    rows = layer_rows(analysis)
    by_op = {row["op"]: row for row in rows}
    assert by_op["MaxPool"]["upper"] == pytest.approx(2.0)  # 3x3 stride 2
    assert by_op["BatchNormalization"]["fused_into"] is not None
    assert any(len(s.members) > 1 for s in analysis.segments)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv2(torch.relu(self.conv1(x)))))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.blocks(torch.relu(self.stem(x)))
        return self.head(h.mean(dim=(2, 3)))


def test_small_resnet_residual_sums():
    torch.manual_seed(6)
    model = SmallResNet()
    randomise_batchnorm(model)
    graph = convert(model, (1, 8, 8), fold=False)
    analysis = check_sound(graph, (1, 8, 8))
    adds = [r for r in analysis.records if r.ctx.op_type == "Add" and len(r.varying) == 2]
    assert len(adds) == 2


class SharedBranches(nn.Module):
    """The input feeds two branches which are concatenated, then added to a projection of the input."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.skip, self.out = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(6, 10), nn.Linear(10, 3)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.out(h + self.skip(x))


def test_dag_concat_and_shared_input():
    torch.manual_seed(7)
    graph = convert(SharedBranches(), (6,))
    analysis = check_sound(graph, (6,), scale=2.0)
    ops = {r.ctx.op_type for r in analysis.records}
    assert {"Concat", "Add"} <= ops


class Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h * h


def test_product_of_activations_is_unbounded_with_reason():
    graph = convert(Square(), (4,))
    result = certificate(graph, (4,), ascent_steps=0)
    assert result["network"]["upper"] is None and result["network"]["product"] is None
    assert "product" in result["network"]["reason"]


ALEXNET = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_bvlc_alexnet.onnx")


@pytest.mark.slow  # 61M parameters: the Fourier bounds of five convolutions and three large dense layers
@pytest.mark.skipif(not os.path.exists(ALEXNET), reason="onnx light test models not installed")
def test_alexnet_with_lrn_and_overlapping_pools():
    graph = certify.to_torch(certify.load_onnx(ALEXNET))
    shape = tuple(graph.shapes[graph.input_names[0]][1:])
    analysis = network_bound(graph, shape)
    ops = {r.ctx.op_type for r in analysis.records}
    assert {"LRN", "MaxPool", "Conv", "Gemm"} <= ops
    upper = analysis.composed[analysis.output_name]
    assert upper is not None and upper <= analysis.product[analysis.output_name]
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn((1, *shape), generator=gen) * 0.01  # small inputs: the final softmax is not saturated
    assert float(jacobian_norms(graph, xs, iters=8).max()) <= upper
    pools = [r for r in analysis.records if r.ctx.op_type == "MaxPool"]
    assert all(r.bound.upper == pytest.approx(2.0) for r in pools)


def digits_mlp():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    torch.manual_seed(0)
    model = mlp([64, 32, 10])
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return convert(model, (64,)), x[1200:1400], y[1200:1400]


@pytest.fixture(scope="module")
def digits():
    return digits_mlp()


def probe_flips(graph, x, y, radius, norm, steps=30, seed=0) -> bool:
    """Gradient and random probing restricted to the radius: True if any probe changes the class."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(x).unsqueeze(0)

    def project(d):
        if norm == "l2":
            return d * min(1.0, radius / max(float(d.norm()), 1e-12))
        return d.clamp(-radius, radius)

    for _ in range(20):  # random points on the boundary of the ball
        d = torch.randn(x0.shape, generator=gen)
        d = d / d.norm() * radius if norm == "l2" else torch.sign(d) * radius
        if int(graph(x0 + d).argmax()) != y:
            return True
    d = torch.zeros_like(x0)
    for _ in range(steps):  # PGD on the worst margin
        d.requires_grad_(True)
        logits = graph(x0 + d)[0]
        other = logits.clone()
        other[y] = -math.inf
        loss = other.max() - logits[y]
        (g,) = torch.autograd.grad(loss, d)
        step = g / (g.norm() + 1e-12) * radius * 0.3 if norm == "l2" else g.sign() * radius * 0.3
        d = project((d + step).detach())
        if int(graph(x0 + d).argmax()) != y:
            return True
    return False


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_certified_samples_are_never_flipped_inside_their_radius(digits, norm):
    graph, x, y = digits
    result = certificate(graph, (64,), dataset=(x, y), norm=norm, epsilons=[0.01, 0.05], ascent_steps=0)
    cert = result["certified"]
    assert cert["clean_accuracy"] > 0.8
    radii = np.array([r or 0.0 for r in cert["radii"]])
    assert (radii > 0).sum() > 10
    accs = cert["certified_accuracy"]
    assert accs["0.01"] >= accs["0.05"]
    assert accs["0.01"] <= cert["clean_accuracy"]
    certified = np.flatnonzero(radii > 0)[:12]
    for i in certified:
        assert not probe_flips(graph, x[i], int(y[i]), float(radii[i]) * 0.999, norm), f"sample {i} flipped"


def test_certified_radii_public_function_matches_certificate(digits):
    graph, x, y = digits
    analysis = network_bound(graph, (64,))
    radii = certified_radii(graph, x[:20], y[:20], analysis)
    again = certified_radii(graph, x[:20], y[:20], pair_bounds(analysis))
    assert radii.shape == (20,) and np.allclose(radii, again)
    result = certificate(graph, (64,), dataset=(x[:20], y[:20]), ascent_steps=0)
    assert np.allclose(radii, np.array([r or 0.0 for r in result["certified"]["radii"]]))
    # pair bounds never exceed sqrt(2) times the network bound, and the radius is their margin ratio
    pairs = pair_bounds(analysis)
    assert np.all(pairs <= math.sqrt(2) * analysis.composed[analysis.output_name] * (1 + 1e-9))


def test_bad_inputs_raise_clear_errors(digits):
    graph, x, y = digits
    with pytest.raises(ValueError, match="shape"):
        certificate(graph, (63,), dataset=(x, y))
    with pytest.raises(ValueError, match="norm"):
        certificate(graph, (64,), norm="l1")
    with pytest.raises(ValueError, match="labels"):
        certified_radii(graph, x[:3], y[:2], network_bound(graph, (64,)))


def test_cli_bounds_table_and_json(tmp_path, digits):
    from certify.cli import main

    torch.manual_seed(8)
    model_path = tmp_path / "mlp.onnx"
    torch.onnx.export(mlp([64, 16, 10]).eval(), torch.randn(1, 64), str(model_path), dynamo=False, opset_version=13)
    _, x, y = digits
    data_path = tmp_path / "test.npz"
    np.savez(data_path, x=x[:30], y=y[:30])
    runner = CliRunner()
    out = runner.invoke(main, ["bounds", str(model_path), "--json", "--data", str(data_path), "--eps", "0.05"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert {"node", "op", "lower", "upper", "method"} <= set(result["layers"][0])
    assert {"product", "upper", "lower"} <= set(result["network"])
    assert "0.05" in result["certified"]["certified_accuracy"]
    table = runner.invoke(main, ["bounds", str(model_path)])
    assert table.exit_code == 0 and "Gemm" in table.output and "composed upper" in table.output
    square_path = tmp_path / "square.onnx"
    torch.onnx.export(Square().eval(), torch.randn(1, 4), str(square_path), dynamo=False, opset_version=13)
    unbounded = json.loads(runner.invoke(main, ["bounds", str(square_path), "--json"]).output)
    assert unbounded["network"]["upper"] is None and unbounded["network"]["reason"]
    missing = runner.invoke(main, ["bounds", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2


class Zoo(nn.Module):
    """Reflect padding, transposes, slices, constant scales, concatenation of varying tensors, average pooling with
    ceil_mode, reductions and a residual from the input: every rule on one DAG."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.lin = nn.Linear(6 * 2 * 3, 4)
        self.skip = nn.Linear(2, 4)

    def forward(self, x):
        h = self.conv(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))
        h = nn.functional.leaky_relu(h, 0.2).transpose(2, 3)[:, :, 1:5, :] * 0.5 - 1.0
        h2 = nn.functional.elu(h) / 3.0 + torch.tanh(h)
        h = torch.cat([h, nn.functional.softplus(h2)], 1)
        h = nn.functional.avg_pool2d(h, 2, ceil_mode=True)
        out = self.lin(h.flatten(1)) + self.skip(x.mean(dim=(2, 3)))
        return torch.log_softmax(out, 1)


def test_zoo_of_rules_is_sound():
    torch.manual_seed(9)
    graph = convert(Zoo(), (2, 6, 6))
    analysis = check_sound(graph, (2, 6, 6), scale=2.0)
    ops = {r.ctx.op_type for r in analysis.records}
    assert {"Pad", "Transpose", "Slice", "Mul", "Concat", "AveragePool", "ReduceMean", "LogSoftmax"} <= ops
    assert all(r.bound.upper is not None for r in analysis.records if r.ctx.op_type not in ("Add", "Concat"))


@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU, nn.Mish])
def test_exported_gated_activations_are_recognised(act):
    torch.manual_seed(10)
    graph = convert(mlp([6, 12, 12, 3], act=act), (6,))
    analysis = check_sound(graph, (6,), scale=3.0)
    muls = [r for r in analysis.records if r.ctx.op_type == "Mul" and r.bound.method.startswith("constant:")]
    assert len(muls) == 2


def test_every_operator_carries_its_own_rule():
    from certify.ops import registry
    from certify.ops.base import OnnxOp

    missing = [s.op_type for s in registry.supported()
               if s.op_type != "Constant" and registry._REGISTRY[s.op_type].lipschitz is OnnxOp.lipschitz]
    assert missing == []
