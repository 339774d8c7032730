"""VNN-LIB properties: the reader on the competition's files and on malformed ones, falsification confirmed in
onnxruntime, proofs, and the ``lipcert vnnlib`` command."""

from __future__ import annotations

import os

import numpy as np
import pytest

from certify.errors import ModelRejected
from certify.vnnlib import parse_vnnlib, read_vnnlib

DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "vnncomp2021-dev")
DEV = os.environ.get("VNNCOMP_DEV", os.path.normpath(DEV))
needs_dev = pytest.mark.skipif(not os.path.isdir(DEV), reason="VNN-COMP development set not present")

HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 0.5))\n"


@needs_dev
def test_reads_acasxu_disjunction_of_input_boxes():
    prop = read_vnnlib(os.path.join(DEV, "acasxu", "prop_6.vnnlib"))
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (5, 5, 2)
    first, second = prop.cases
    assert first.lower[1] == pytest.approx(0.11140846) and second.upper[1] == pytest.approx(-0.11140846)
    assert len(first.unsafe) == 4  # Y_j <= Y_0 for j = 1..4
    np.testing.assert_array_equal(first.unsafe[0].C, [[-1, 1, 0, 0, 0]])
    assert first.unsafe[0].satisfied_by([1, 0.5, 0, 0, 0]) and not first.unsafe[0].satisfied_by([0, 1, 0, 0, 0])


@needs_dev
def test_reads_conjunction_and_robustness_files():
    prop2 = read_vnnlib(os.path.join(DEV, "acasxu", "prop_2.vnnlib"))
    (case,) = prop2.cases
    assert case.unsafe[0].C.shape == (4, 5)  # one conjunction of four rows
    mnist = read_vnnlib(os.path.join(DEV, "mnistfc", "prop_0_0.05.vnnlib"))
    (case,) = mnist.cases
    assert (mnist.n_inputs, len(case.unsafe)) == (784, 9)
    assert np.all(case.lower >= 0) and np.all(case.upper <= 1) and np.all(case.upper - case.lower <= 0.1 + 1e-6)
    oval = read_vnnlib(os.path.join(DEV, "oval21", "cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib"))
    assert oval.n_inputs == 3072 and len(oval.cases[0].unsafe) == 9


def test_linear_combinations_equalities_and_strict_rows():
    prop = parse_vnnlib(HEADER + BOX + "(assert (<= (+ (* 2 Y_0) (- Y_1) 1) (* 0.5 3)))\n(assert (< Y_1 Y_0))\n"
                                      "(assert (= X_1 0.25))")
    (case,) = prop.cases
    assert case.lower.tolist() == [-1, 0.25] and case.upper.tolist() == [1, 0.25]
    (conj,) = case.unsafe
    np.testing.assert_allclose(conj.C, [[2, -1], [-1, 1]])
    np.testing.assert_allclose(conj.d, [0.5, 0])
    assert conj.strict.tolist() == [False, True]
    assert conj.satisfied_by([0.2, 0.1]) and not conj.satisfied_by([0.1, 0.1])  # 0.1 < 0.1 fails


def test_disjunctions_expand_and_group_by_input_box():
    text = HEADER + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))\n" \
                    "(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (or (and (<= Y_0 0)) (and (<= Y_1 0))))"
    prop = parse_vnnlib(text)
    assert [c.lower[0] for c in prop.cases] == [0, 2]
    assert all(len(c.unsafe) == 2 for c in prop.cases)


def test_an_empty_box_or_false_constant_leaves_no_case():
    assert parse_vnnlib(HEADER + BOX + "(assert (<= X_0 -2))(assert (<= Y_0 Y_1))").cases == []
    assert parse_vnnlib(HEADER + BOX + "(assert (<= 1 0))(assert (<= Y_0 Y_1))").cases == []


@pytest.mark.parametrize("text, needle", [
    (HEADER + BOX + "(assert (<= Y_0 Y_1)", "line 9: '(' is never closed"),
    (HEADER + BOX + "(assert (<= Y_0 Y_1)))", "line 9: unbalanced ')'"),
    (HEADER + BOX + "(assert (<= Y_0 Y_9))", "'Y_9' is neither a number nor a declared variable"),
    (HEADER + BOX + "(assert (<= (* Y_0 Y_1) 0))", "product of two variables"),
    (HEADER + BOX + "(assert (not (<= Y_0 0)))", "unsupported operator 'not'"),
    (HEADER + BOX + "(assert (<= (+ X_0 X_1) 1))", "inputs must form a box"),
    (HEADER + BOX + "(assert (<= X_0 Y_0))", "mixing inputs and outputs"),
    (HEADER + "(assert (<= X_0 1))(assert (<= Y_0 0))", "X_0 has no finite lower and upper bound"),
    (HEADER + "(declare-const X_0 Real)", "line 5: X_0 declared twice"),
    ("(declare-const X_1 Real)(declare-const Y_0 Real)", "X_0 is not declared"),
    ("(declare-const X_0 Int)", "only Real"),
    ("(declare-const Z Real)", "only X_<i>"),
    ("(check-sat)", "unsupported command 'check-sat'"),
    ("X_0", "outside parentheses"),
    (HEADER + BOX + "(assert (<= Y_0 1e999))", "out of range"),
    ("(" * 100, "nesting deeper"),
    (HEADER + BOX + "(assert (<= Y_0))", "takes two arguments"),
    (HEADER + BOX + "".join(f"(assert (or (<= Y_0 {i}) (<= Y_1 {i})))" for i in range(20)), "more than 10000"),
])
def test_malformed_or_unsupported_files_are_refused_with_a_code(text, needle):
    with pytest.raises(ModelRejected) as info:
        parse_vnnlib(text)
    assert info.value.code == "invalid_vnnlib"
    assert needle in info.value.message


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ModelRejected) as info:
        read_vnnlib(tmp_path / "missing.vnnlib")
    assert info.value.code == "unreadable_file"
    bad = tmp_path / "bad.vnnlib"
    bad.write_bytes(b"; ok\n\xff\xfe")
    with pytest.raises(ModelRejected, match="line 2: not UTF-8"):
        read_vnnlib(bad)
