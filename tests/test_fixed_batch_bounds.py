"""Global bounds of a model exported for a fixed batch of 4 that reshapes by it: analysed at that batch, they equal
the bounds of the same network exported for any batch; a graph that mixes the samples of its batch is refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from certify import load_onnx, to_torch
from certify.errors import ModelRejected
from certify.lipschitz import network, rounding


class Net(nn.Module):
    """conv -> relu -> conv -> reshape by the batch -> linear (the last three fuse into one linear segment); ``mix``
    joins the samples of the batch ("reshape", "softmax") or scales each batch position by its own row
    ("positions")."""

    def __init__(self, batch: int | None, mix: str | None = None):
        super().__init__()
        torch.manual_seed(3)
        self.batch, self.mix = batch, mix
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2)
        self.fc = nn.Linear(36 * (4 if mix == "reshape" else 1), 10 * (4 if mix == "reshape" else 1))

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(x)))
        if self.mix == "reshape":  # all four samples in one row of a dense layer
            return self.fc(h.reshape(1, -1)).reshape(4, 10)
        out = self.fc(h.reshape(self.batch or -1, 36))  # [4, 36] (fixed batch) or [-1, 36] (any batch)
        if self.mix == "positions":
            return out * torch.arange(1.0, 5.0).reshape(4, 1)
        return out.softmax(dim=0) if self.mix == "softmax" else out


def export(batch: int | None, mix: str | None = None) -> bytes:
    buffer = io.BytesIO()
    dynamic = None if batch else {"x": {0: "batch"}, "y": {0: "batch"}}
    torch.onnx.export(Net(batch, mix).eval(), torch.randn(batch or 2, 1, 8, 8), buffer, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"], dynamic_axes=dynamic)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def graphs():
    fixed, free = (to_torch(load_onnx(export(b))) for b in (4, None))
    assert fixed.fixed_batch == 4 and fixed.reshapes_by_batch() and free.fixed_batch is None
    return fixed, free


def test_the_global_bound_and_the_float_error_of_a_fixed_batch_export_equal_the_free_batch_ones(graphs):
    fixed, free = graphs
    a, b = (network.analyse(g, (1, 8, 8)) for g in (fixed, free))
    assert a.composed[a.output_name] == pytest.approx(b.composed[b.output_name], rel=1e-12)
    assert a.product[a.output_name] == pytest.approx(b.product[b.output_name], rel=1e-12)
    assert [r.bound.upper for r in a.records if r.varying] == pytest.approx(
        [r.bound.upper for r in b.records if r.varying], rel=1e-12)
    assert [[r.module.op_type for r in s.members] for s in a.segments] == [["Conv"], ["Conv", "Reshape", "Gemm"]]
    net = Net(None).eval().double()
    for seed in range(10):  # the bound is above the spectral norm of the Jacobian anywhere (here at random points)
        x = torch.randn(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: net(v.reshape(1, 1, 8, 8)).reshape(-1), x)
        assert torch.linalg.matrix_norm(jacobian, 2) <= a.composed[a.output_name]
    xs = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    errors_fixed, errors_free = rounding.logit_errors(fixed, a, xs), rounding.logit_errors(free, b, xs)
    assert np.all(np.isfinite(errors_fixed)) and np.allclose(errors_fixed, errors_free, rtol=1e-5)


@pytest.mark.parametrize("mix, code", [("reshape", "samples_interact"), ("softmax", "samples_interact"),
                                       ("positions", "batch_positions_differ")])
def test_a_fixed_batch_graph_without_one_per_sample_map_is_refused(mix, code):
    graph = to_torch(load_onnx(export(4, mix)))
    assert graph.fixed_batch == 4 and graph.reshapes_by_batch()
    with pytest.raises(ModelRejected) as refused:
        network.analyse(graph, (1, 8, 8))
    assert refused.value.code == code, refused.value


def test_lipschitz_bounds_cli_on_fixed_and_free_batch_exports(tmp_path):
    from certify.cli import main

    results = []
    for name, batch, mix in (("fixed", 4, None), ("free", None, None), ("mixed", 4, "reshape")):
        (tmp_path / f"{name}.onnx").write_bytes(export(batch, mix))
        results.append(CliRunner().invoke(main, ["bounds", str(tmp_path / f"{name}.onnx"), "--json"]))
    fixed, free, mixed = results
    assert fixed.exit_code == 0 and free.exit_code == 0, fixed.output + free.output
    a, b = json.loads(fixed.output), json.loads(free.output)
    assert a["network"]["upper"] is not None
    assert a["network"]["upper"] == pytest.approx(b["network"]["upper"], rel=1e-12)
    assert mixed.exit_code == 2 and json.loads(mixed.output)["error"]["code"] == "samples_interact", mixed.output


def test_a_job_on_a_fixed_batch_export_certifies_like_the_free_batch_one():
    """The job's global bound and the certified accuracy it gives (6 samples: one full chunk of 4, one padded)."""
    from certify.pipeline import run_pipeline

    x = np.random.default_rng(2).uniform(0, 1, size=(6, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = Net(None)(torch.from_numpy(x)).argmax(1).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    config = {"samples": 6, "attacks": "none", "epsilons": [0.01]}
    fixed, free = (run_pipeline(export(b), config, dataset=buffer.getvalue()).statement["predicate"]
                   for b in (4, None))
    assert fixed["bounds"]["network"]["upper"] == pytest.approx(free["bounds"]["network"]["upper"], rel=1e-12)
    assert fixed["certified"]["accuracy"] == free["certified"]["accuracy"] == {"l2": {"0.01": 1.0}}
