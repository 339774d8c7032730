"""Models exported with a fixed batch of 1 (a reshape to ``[1, 64]``) run per sample: forward, attacks,
certification, local bounds and the units analysis give what the same network exported for any batch gives."""

from __future__ import annotations

import io

import numpy as np
import torch

from certify import load_onnx, to_torch
from tests.onnx_builders import flatten_mlp, relu_model


def _dataset(n: int = 10) -> tuple[np.ndarray, np.ndarray, bytes]:
    x = np.random.default_rng(1).uniform(0, 1, size=(n, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = to_torch(load_onnx(flatten_mlp(None).SerializeToString()))(torch.from_numpy(x)).argmax(1).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return x, y, buffer.getvalue()


def test_a_graph_that_reshapes_by_its_batch_runs_in_chunks_with_gradients():
    fixed = to_torch(load_onnx(flatten_mlp(1).SerializeToString()))
    free = to_torch(load_onnx(flatten_mlp(None).SerializeToString()))
    assert fixed.reshapes_by_batch() and not free.reshapes_by_batch()
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    out = fixed(x)
    assert out.shape == (5, 10) and torch.allclose(out, free(x), atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_fixed_batch_graph_that_batches_freely_runs_batched():
    """Most exports pin the batch to 1 without reshaping by it; those keep running whole batches."""
    module = to_torch(load_onnx(relu_model(shape=(1, 4)).SerializeToString()))
    assert module.fixed_batch == 1 and not module.reshapes_by_batch()
    assert module(torch.rand(3, 4)).shape == (3, 4)


def test_pipeline_on_a_fixed_batch_model_matches_the_free_batch_export():
    from certify.pipeline import run_pipeline

    _, _, data = _dataset()
    config = {"samples": 10, "attacks": "quick", "epsilons": [0.05, 0.2], "analyses": ["units"]}
    fixed, free = (run_pipeline(flatten_mlp(b).SerializeToString(), config, dataset=data).statement["predicate"]
                   for b in (1, None))
    assert fixed["certified"]["clean_accuracy"] == free["certified"]["clean_accuracy"] == 1.0
    assert fixed["certified"]["methods"] == free["certified"]["methods"]
    assert fixed["certified"]["accuracy"] == free["certified"]["accuracy"]
    assert fixed["certified"]["accuracy"]["l2"]["0.05"] > 0
    for eps in ("0.05", "0.2"):
        assert (fixed["attacks"]["results"]["l2"][eps]["robust_accuracy"]
                == free["attacks"]["results"]["l2"][eps]["robust_accuracy"])
    assert fixed["bounds"]["network"]["upper"] == free["bounds"]["network"]["upper"]
    for a, b in zip(fixed["analyses"]["units"]["directions"], free["analyses"]["units"]["directions"], strict=True):
        assert (a["kind"], a.get("unit"), a["top"], a["labels"]) == (b["kind"], b.get("unit"), b["top"], b["labels"])
        assert np.allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-6)  # float32 sums in another order


def test_local_bounds_of_a_fixed_batch_of_4_with_a_partial_last_chunk_match_the_free_batch_export():
    """A graph exported for a batch of 4 on 10 samples: chunks of 4, 4 and 2 (padded), and chunks where some
    samples are misclassified or already certified, so a method bounds fewer than 4 of them. Every method gives
    each sample what the export for any batch gives."""
    from certify.local.samples import METHODS, certify_samples

    x, y, _ = _dataset()
    y[[3, 9]] = (y[[3, 9]] + 1) % 10  # misclassified: one in a full chunk, one in the partial last chunk
    fixed, free = (to_torch(load_onnx(flatten_mlp(b).SerializeToString())) for b in (4, None))
    assert fixed.fixed_batch == 4 and fixed.reshapes_by_batch()
    for eps, skip in ((0.005, True), (0.02, False)):
        a, b = (certify_samples(m, x, y, eps, "linf", methods=METHODS, skip_certified=skip) for m in (free, fixed))
        assert np.array_equal(a.correct, b.correct) and not b.correct[[3, 9]].any()
        for m in METHODS:
            assert np.array_equal(a.ran[m], b.ran[m]) and np.array_equal(a.certified[m], b.certified[m]), m
            assert np.allclose(a.lower[m], b.lower[m], rtol=1e-9, atol=1e-12, equal_nan=True), m
        assert np.allclose(a.radius, b.radius, rtol=1e-9, atol=1e-12, equal_nan=True)
        assert b.any_certified.any() or eps > 0.01


def test_unit_activations_of_a_fixed_batch_of_4_with_a_partial_last_chunk_match_the_free_batch_export():
    from certify.units import activations, default_node

    x, _, _ = _dataset()
    fixed, free = (to_torch(load_onnx(flatten_mlp(b).SerializeToString())) for b in (4, None))
    node = default_node(free)
    a, b = ([(start, phi) for start, phi in activations(m, x, node, batch_size=4)] for m in (free, fixed))
    assert [s for s, _ in b] == [0, 4, 8] and [len(p) for _, p in b] == [4, 4, 2]
    assert np.allclose(np.concatenate([p for _, p in a]), np.concatenate([p for _, p in b]), atol=1e-6)
