"""Each operator carries its own bound rule; the composition in ``certify/lipschitz/`` knows no operator by name.

The first test keeps it so: a string literal equal to a registered op type, or a comparison with an ``op_type``, in
``certify/lipschitz/`` would be a rule keyed on an operator's name outside its class. The second shows what that
buys: an operator defined in one place (here, in the test) is bounded and composed with no other change. The last
keeps the pattern matching of exported gated activations working from the operators' flags.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.convert import to_torch
from certify.lipschitz import constants, network_bound
from certify.load import load_onnx
from certify.ops import registry
from certify.ops.elementwise import Pointwise

LIPSCHITZ = Path(__file__).resolve().parent.parent / "certify" / "lipschitz"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (module, class and function docstrings name operators in prose)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _names_an_operator(node: ast.AST, op_types: set[str]) -> bool:
    if isinstance(node, ast.Constant) and node.value in op_types:
        return True
    return isinstance(node, ast.Compare) and any(
        isinstance(side, ast.Attribute) and side.attr == "op_type" for side in [node.left, *node.comparators])


@pytest.mark.parametrize("path", sorted(LIPSCHITZ.glob("*.py")), ids=lambda p: p.name)
def test_the_lipschitz_package_dispatches_on_no_operator_name(path):
    op_types = set(registry.classes())
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    hits = [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if id(node) not in docstrings and _names_an_operator(node, op_types)]
    assert not hits, "operator names in certify/lipschitz (put the rule on the operator's class):\n" + "\n".join(hits)


class Sin(Pointwise):
    """An operator the project does not register, declared as a new one would be: forward and slope range."""

    fn = staticmethod(torch.sin)
    fixed_slope = (-1.0, 1.0)


def _sin_then_gemm(weight: np.ndarray) -> bytes:
    nodes = [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Gemm", ["s", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_an_operator_declared_in_one_place_is_bounded_and_composed(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "Sin", Sin)
    weight = np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32)
    module = to_torch(load_onnx(_sin_then_gemm(weight)))
    for norm in ("l2", "linf"):
        analysis = network_bound(module, (3,), norm=norm)
        sin = analysis.records[0]
        assert sin.bound.upper == 1.0 and sin.rule.slope.lo == -1.0
        assert analysis.composed[analysis.output_name] == pytest.approx(3.0, rel=1e-9)
        assert analysis.composed[analysis.output_name] >= 3.0


def _exported(nodes, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _scalar(name: str, value: float):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


GATED = {
    "SiLU": (_exported([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]),
             constants.SILU_SLOPE.lipschitz),
    "GELU": (_exported([helper.make_node("Div", ["x", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                        helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                        helper.make_node("Mul", ["m", "half"], ["y"])],
                       [_scalar("r2", 1.4142135), _scalar("one", 1.0), _scalar("half", 0.5)]),
             constants.GELU_SLOPE.lipschitz),
    "Mish": (_exported([helper.make_node("Softplus", ["x"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]),
                        helper.make_node("Mul", ["t", "x"], ["y"])]), constants.MISH_SLOPE.lipschitz),
}


@pytest.mark.parametrize("name", sorted(GATED))
def test_exported_gated_activations_are_recognised_through_the_operators_flags(name):
    """``x * g(x)`` is found from ``gate_product`` / ``gate_step`` on the operator classes, not from op names."""
    model, slope = GATED[name]
    analysis = network_bound(to_torch(load_onnx(model)), (4,))
    assert any(r.bound.method.startswith(f"constant: {name}") for r in analysis.records if r.varying)
    assert slope <= analysis.composed["y"] <= slope * (1 + 1e-6) + 1e-6
