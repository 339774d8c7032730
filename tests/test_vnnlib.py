"""VNN-LIB properties: the reader on the competition's files and on malformed ones, falsification confirmed in
onnxruntime, proofs, and the ``lipcert vnnlib`` command."""

from __future__ import annotations

import importlib.util
import json
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
    assert info.value.code == "file_not_found"
    bad = tmp_path / "bad.vnnlib"
    bad.write_bytes(b"; ok\n\xff\xfe")
    with pytest.raises(ModelRejected, match="line 2: not UTF-8"):
        read_vnnlib(bad)
    assert read_vnnlib((HEADER + BOX + "(assert (<= Y_0 Y_1))").encode()).n_inputs == 2  # an upload's bytes


# --- deciding properties on a tiny network -------------------------------------------------------------------------
W1 = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)  # h = relu(x0), twice
W2 = np.array([[1.0, -1.0], [1.0, 0.0]], dtype=np.float32)  # y0 = h0 - h1 = 0, y1 = h0 = max(x0, 0)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gemm", ["x", "W1"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Gemm", ["h", "W2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path)


def tiny_ibp(lower: np.ndarray, upper: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Interval bounds of the tiny network (sound, and loose: y0 = h0 - h1 is 0 but gets [-width, width])."""
    def affine(W, lo, hi):
        pos, neg = np.clip(W, 0, None), np.clip(W, None, 0)
        return lo @ pos.T + hi @ neg.T, hi @ pos.T + lo @ neg.T
    lo, hi = affine(W1, lower, upper)
    lo, hi = affine(W2, np.maximum(lo, 0), np.maximum(hi, 0))
    return affine(C, lo, hi)[0]


def prop_text(unsafe: str, box: str = "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 -1))(assert (<= X_1 1))"):
    return HEADER + box + unsafe


def decider_for(path, prop, bounds):
    from certify.decide import load_decider

    decider = load_decider(path, prop, use_bounds=False)
    decider.bounds = bounds
    return decider


def test_counterexample_found_and_confirmed_in_onnxruntime(tiny_onnx):
    from certify.decide import vnncomp_result

    prop = parse_vnnlib(prop_text("(assert (>= Y_1 0.75))"))
    verdict = decider_for(tiny_onnx, prop, None).decide(prop, timeout=20)
    assert (verdict.result, verdict.method) == ("violated", "attack")
    ce = verdict.counterexample
    assert ce.x.dtype == np.float32 and 0.75 <= ce.x[0] <= 1 and -1 <= ce.x[1] <= 1
    assert ce.y[1] == pytest.approx(ce.x[0]) and ce.y[1] >= 0.75
    text = vnncomp_result(verdict)
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith(")") and f"(Y_1 {float(ce.y[1])!r})" in text


def test_unconfirmed_candidates_are_never_reported(tiny_onnx):
    from certify.falsify import Checker

    prop = parse_vnnlib(prop_text("(assert (>= Y_1 0.75))"))
    decider = decider_for(tiny_onnx, prop, None)

    class Disagrees(Checker):  # onnxruntime stand-in that never sees the unsafe output
        def outputs(self, x32):
            return np.zeros(2, dtype=np.float32)

    decider.checker = Disagrees(decider.checker.session, "x", (1, 2))
    verdict = decider.decide(prop, timeout=2)
    assert verdict.result == "unknown" and verdict.counterexample is None


def test_holds_by_bounds_and_by_input_splitting(tiny_onnx):
    prop = parse_vnnlib(prop_text("(assert (<= Y_1 -0.5))"))  # y1 = relu(x0) >= 0
    verdict = decider_for(tiny_onnx, prop, tiny_ibp).decide(prop, timeout=20)
    assert (verdict.result, verdict.method) == ("holds", "bounds")
    prop = parse_vnnlib(prop_text("(assert (<= Y_0 -0.3))"))  # y0 = 0, but interval bounds need boxes < 0.3 wide
    verdict = decider_for(tiny_onnx, prop, tiny_ibp).decide(prop, timeout=20)
    assert (verdict.result, verdict.method) == ("holds", "input-split")
    assert verdict.stats["proved"] >= 4


def test_without_bounds_a_holding_property_stays_unknown(tiny_onnx):
    prop = parse_vnnlib(prop_text("(assert (<= Y_1 -0.5))"))
    verdict = decider_for(tiny_onnx, prop, None).decide(prop, timeout=1)
    assert verdict.result == "unknown" and "no bound engine" in verdict.reason
    assert verdict.method == "attack"  # what was tried: the attacks alone


def test_vacuous_property_holds(tiny_onnx):
    prop = parse_vnnlib(prop_text("(assert (<= Y_1 -0.5))", "(assert (>= X_0 1))(assert (<= X_0 0))(assert (= X_1 0))"))
    assert decider_for(tiny_onnx, prop, None).decide(prop, timeout=1).result == "holds"


# --- the command line ----------------------------------------------------------------------------------------------
def run_cli(*args):
    from click.testing import CliRunner

    from certify.cli import main

    return CliRunner().invoke(main, ["vnnlib", *map(str, args)])


def test_cli_violated_writes_the_competition_result(tiny_onnx, tmp_path):
    prop = tmp_path / "p.vnnlib"
    prop.write_text(prop_text("(assert (>= Y_1 0.75))"))
    out = tmp_path / "result.txt"
    result = run_cli(tiny_onnx, prop, "--timeout", "20", "--counterexample", out)
    assert result.exit_code == 1 and result.output.startswith("violated  method attack")
    assert out.read_text().startswith("sat\n((X_0 ")
    result = run_cli(tiny_onnx, prop, "--timeout", "20", "--json")
    doc = json.loads(result.output)
    assert (result.exit_code, doc["result"], doc["exit_code"], len(doc["counterexample"]["x"])) == (1, "violated", 1, 2)


def test_cli_holding_property_exit_code(tiny_onnx, tmp_path):
    from certify.decide import engine_bounds  # noqa: F401  (the default bound step, when installed)

    prop = tmp_path / "p.vnnlib"
    prop.write_text(prop_text("(assert (<= Y_1 -0.5))"))
    out = tmp_path / "result.txt"
    result = run_cli(tiny_onnx, prop, "--timeout", "2", "--counterexample", out)
    engine = importlib.util.find_spec("certify.local") is not None
    assert result.exit_code == (0 if engine else 3)
    assert out.read_text() == ("unsat\n" if engine else "unknown\n")
    assert result.output.startswith("holds" if engine else "unknown")


@pytest.mark.parametrize("unsafe, code", [("(assert (<= Y_1 -0.5)", "invalid_vnnlib"),
                                          ("(declare-const Y_2 Real)(assert (<= Y_2 0))", "property_mismatch")])
def test_cli_bad_input_exits_2_with_one_error_line(tiny_onnx, tmp_path, unsafe, code):
    prop = tmp_path / "p.vnnlib"
    prop.write_text(prop_text(unsafe))
    result = run_cli(tiny_onnx, prop)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {code}: ") and result.output.count("\n") == 1
    assert run_cli(tiny_onnx, tmp_path / "missing.vnnlib").exit_code == 2
