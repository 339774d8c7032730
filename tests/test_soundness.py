"""Every registered operator's bound rule against the float64 truth, alone and inside fused segments and DAGs.

Instances come from the generator each operator declares beside its conversion (``OnnxOp.example``); the claimed
bound is the whole-model bound ``lipcert bounds`` computes, the truth is :mod:`certify.lipschitz.soundness`'s.
``HYPOTHESIS_PROFILE=deep`` (or ``pytest --slow``) runs the deep sweep.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify.errors import ModelRejected
from certify.lipschitz import segments, soundness
from certify.ops import registry
from certify.ops.base import OnnxOp

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
SETTINGS = settings(max_examples=150 if DEEP else 8, deadline=None, derandomize=not DEEP,
                    suppress_health_check=[HealthCheck.too_slow], database=None)
SEEDS = st.integers(0, 2**31 - 1)


@dataclass(frozen=True)
class Known:
    """A family of instances that was once unsound (the review's table, rows 1-6): checked on its own, over the
    seeds that draw it, so a regression shows under the row's name."""

    row: int
    op_type: str
    matches: Callable[[str, str, bool], bool]  # (family, norm, lowered cap)


KNOWN = [
    Known(1, "Clip", lambda family, norm, lowered: "varying" in family),
    Known(2, "fused", lambda family, norm, lowered: lowered and "misplaced" in family),
    Known(4, "Celu", lambda family, norm, lowered: "alpha<0" in family or "alpha=0" in family),
    Known(5, "ConvTranspose", lambda family, norm, lowered: norm == "linf"),
    Known(6, "Cast", lambda family, norm, lowered: "float16" in family),
]


def known(op_type: str, family: str, norm: str, lowered: bool = False) -> Known | None:
    return next((k for k in KNOWN if k.op_type == op_type and k.matches(family, norm, lowered)), None)


def assert_sound(op_type: str, seed: int, lowered: bool = False, only_known: Known | None = None) -> None:
    """Check instance ``seed`` of ``op_type`` under both norms. Known-unsound families are left to their own
    (xfail) test unless ``only_known`` asks for exactly that family."""
    example = soundness.examples(op_type, seed)
    for norm in ("l2", "linf"):
        if known(op_type, example.family, norm, lowered) is not only_known:
            continue
        try:
            result = soundness.check(example.model, norm, seed)
        except (ModelRejected, ValueError):  # refused with a stable code (invalid instance): not a claim
            continue
        assert result.sound, (f"{op_type} seed {seed} ({example.family}), {norm}: claimed {result.upper} below "
                              f"the {'exact value' if result.exact else 'lower bound'} {result.truth}")


def test_every_registered_operator_declares_an_instance_generator():
    missing = [op for op, cls in registry.classes().items() if cls.example.__func__ is OnnxOp.example.__func__]
    assert not missing, f"operators without an instance generator: {missing}"


@pytest.mark.parametrize("op_type", sorted(registry.classes()))
@SETTINGS
@given(seed=SEEDS)
def test_operator_bound_is_sound(op_type, seed):
    assert_sound(op_type, seed)


@SETTINGS
@given(seed=SEEDS, lowered=st.booleans())
def test_fused_segments_are_sound(seed, lowered):
    """Conv / Gemm followed by scale-like ops on every axis; with the materialisation cap lowered the folding
    code (no explicit matrix) runs instead."""
    with pytest.MonkeyPatch.context() as mp:
        if lowered:
            mp.setattr(segments, "EXPLICIT_MAX_INPUTS", 0)
            mp.setattr(segments, "EXPLICIT_MAX_ENTRIES", 0)
        assert_sound("fused", seed, lowered)


@SETTINGS
@given(seed=SEEDS)
def test_small_dags_are_sound(seed):
    assert_sound("dag", seed)


@SETTINGS
@given(seed=SEEDS)
def test_pooled_convolution_blocks_are_sound(seed):
    """Conv, activations, LRN and overlapping max-poolings, the joint bound of certify.lipschitz.pooled."""
    assert_sound("pooled", seed)


def _seeds_of(k: Known, lowered: bool = False, wanted: int = 8) -> list[int]:
    """Seeds whose instance belongs to the known family (under some norm)."""
    found = []
    for seed in range(400):
        family = soundness.examples(k.op_type, seed).family
        if any(k.matches(family, norm, lowered) for norm in ("l2", "linf")):
            found.append(seed)
            if len(found) == wanted:
                break
    return found


@pytest.mark.parametrize("k", [pytest.param(k, id=f"row{k.row}-{k.op_type}") for k in KNOWN])
def test_formerly_unsound_family_is_sound(k):
    lowered = k.op_type == "fused"
    seeds = _seeds_of(k, lowered)
    assert seeds, f"the generator never draws the family of issue row {k.row}"
    with pytest.MonkeyPatch.context() as mp:
        if lowered:
            mp.setattr(segments, "EXPLICIT_MAX_INPUTS", 0)
            mp.setattr(segments, "EXPLICIT_MAX_ENTRIES", 0)
        for seed in seeds:
            assert_sound(k.op_type, seed, lowered, only_known=k)


def test_the_soundness_table_generator_runs(tmp_path):
    path = tmp_path / "soundness.md"
    assert soundness.main(["--write", str(path), "--count", "1", "--ops", "Relu", "Gemm"]) == 0
    text = path.read_text()
    assert "| Relu | l2 | 1 | 0 | 0 | 0 | 1 | 1 | 1 |" in text and "| Gemm | linf |" in text


def _identity_bound(build, norm: str = "l2") -> float | None:
    """The claimed bound of a model that is the identity on its input, built by ``build(graph) -> output``."""
    import numpy as np

    from certify.ops import examples

    g = examples.Graph(np.random.default_rng(0), (4, 1, 2))
    model = g.model(build(g))
    upper, _ = soundness.claimed(model, norm)
    return upper


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_split_with_an_empty_first_part_keeps_its_bound(norm):
    # the selection rule counted copies in the first output only: an empty first part gave the bound 0
    def build(g):
        parts = g.node("Split", ["x", g.ints([0, 1])], outputs=2, axis=0)
        return g.node("Concat", parts[::-1], axis=0)

    assert _identity_bound(build, norm) >= 1.0


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_reduction_over_the_batch_axis_counts_the_reduced_entries(norm):
    # ReduceMean over the batch axis of a batch-1 input is the identity; the group size was read from the
    # output's per-sample shape (batch axis dropped), giving 1/sqrt(4)
    assert _identity_bound(lambda g: g.node("ReduceMean", ["x", g.ints([0])], keepdims=0), norm) >= 1.0
