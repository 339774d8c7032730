"""Run onnx's own backend node test cases through the converter.

A case belongs to operator X when its model is a single X node (``*_expanded`` cases exercise other operators'
function bodies and are not counted). ``python -m certify.conformance --write docs/operators.md`` regenerates the
operator table.
"""

from __future__ import annotations

import argparse
import functools
import io
import warnings
from collections import defaultdict
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from certify.convert import to_torch
from certify.load import opset_of
from certify.ops import registry

#: Cases we skip on purpose, by name, with the reason. Everything else of a supported operator must pass.
KNOWN_SKIPS: dict[str, str] = {
    **{
        name: "BatchNormalization training mode (batch statistics, running-statistics outputs) is refused on purpose: "
        "a certificate needs a fixed function of one input"
        for name in ("test_batchnorm_example_training_mode", "test_batchnorm_epsilon_training_mode")
    },
    **{
        name: "training-mode Dropout with ratio > 0 draws a random mask; the expected output comes from numpy's "
        "generator, which torch cannot reproduce (inference Dropout and ratio 0 are tested)"
        for name in (
            "test_training_dropout",
            "test_training_dropout_default",
            "test_training_dropout_mask",
            "test_training_dropout_default_mask",
        )
    },
}

_SUPPORTED_NP = {np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_}


@functools.cache
def all_cases():
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return [c for c in collect_testcases() if c.kind == "node"]


def case_operator(case) -> str | None:
    nodes = case.model.graph.node
    if len(nodes) != 1 or nodes[0].domain not in ("", "ai.onnx"):
        return None
    return nodes[0].op_type


def multi_node_cases() -> list:
    """Cases of several nodes (mostly ``*_expanded`` function bodies) built only from supported operators."""
    supported = {s.op_type for s in registry.supported()}
    return [c for c in all_cases() if len(c.model.graph.node) > 1
            and all(n.domain in ("", "ai.onnx") and n.op_type in supported for n in c.model.graph.node)]


def cases_for(op_types) -> list:
    wanted = set(op_types)
    return [c for c in all_cases() if case_operator(c) in wanted]


def _arrays(values) -> list:
    """Case data as numpy arrays (some cases store TensorProto values)."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def _unsupported_value(values) -> str | None:
    for v in values:
        if isinstance(v, np.generic):
            v = np.asarray(v)
        if not isinstance(v, np.ndarray):
            return f"non-tensor value ({type(v).__name__})"
        if v.dtype.type not in _SUPPORTED_NP:
            return f"dtype {v.dtype}"
    return None


def run_case(case) -> tuple[str, str]:
    """('pass' | 'fail' | 'skip', detail) for one test case at its native opset."""
    if case.name in KNOWN_SKIPS:
        return "skip", KNOWN_SKIPS[case.name]
    opset = opset_of(case.model)
    missing = sorted({n.op_type for n in case.model.graph.node
                      if n.domain not in ("", "ai.onnx") or registry.lookup(n.op_type, opset) is None})
    if missing:
        return "skip", f"{', '.join(missing)} at opset {opset} not supported"
    data_sets = [(_arrays(inputs), _arrays(outputs)) for inputs, outputs in case.data_sets]
    for inputs, outputs in data_sets:
        reason = _unsupported_value(list(inputs) + list(outputs))
        if reason:
            return "skip", f"{reason} is outside what lipcert needs"
    try:
        model = onnx.shape_inference.infer_shapes(case.model)
    except Exception:  # noqa: BLE001  (some cases are not inferable; convert the raw graph)
        model = case.model
    try:
        module = to_torch(model)
        for inputs, outputs in data_sets:
            with torch.no_grad():
                got = module(*[torch.from_numpy(np.array(a, copy=True)) for a in inputs])
            got = got if isinstance(got, tuple) else (got,)
            if len(got) < len(outputs):
                return "fail", f"{len(got)} outputs, expected {len(outputs)}"
            for g, expected in zip(got, outputs):
                g, expected = g.detach().numpy(), np.asarray(expected)
                if g.dtype != expected.dtype:
                    return "fail", f"dtype {g.dtype}, expected {expected.dtype}"
                np.testing.assert_allclose(g, expected, rtol=case.rtol, atol=case.atol)
    except AssertionError as e:
        return "fail", str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
    except Exception as e:  # noqa: BLE001  (a conformance run reports every failure, it does not stop)
        return "fail", f"{type(e).__name__}: {e}"
    return "pass", ""


def operator_table() -> str:
    """Markdown: each supported operator, the schema versions accepted, and cases passed/total."""
    by_op = defaultdict(lambda: [0, 0, 0])
    for case in all_cases():
        op = case_operator(case)
        if op is None:
            continue
        status, _ = run_case(case)
        counts = by_op[op]
        counts[0 if status == "pass" else 1 if status == "fail" else 2] += 1
    lines = [
        "# Supported ONNX operators",
        "",
        "Generated by `python -m certify.conformance --write docs/operators.md` from onnx's backend node test cases",
        f"(onnx {onnx.__version__}). *Versions* is the range of operator-schema versions accepted (newest: the newest",
        "the installed onnx knows). Skipped cases use dtypes lipcert does not need (strings, 8-bit floats, ...).",
        "",
        "| operator | versions | passed | failed | skipped |",
        "|---|---|---|---|---|",
    ]
    total = [0, 0, 0]
    for s in registry.supported():
        p, f, k = by_op.get(s.op_type, [0, 0, 0])
        total = [total[0] + p, total[1] + f, total[2] + k]
        hi = s.max_version if s.max_version is not None else "newest"
        lines.append(f"| {s.op_type} | {s.min_version}..{hi} | {p} | {f} | {k} |")
    lines.append(f"| **all** | | **{total[0]}** | **{total[1]}** | **{total[2]}** |")
    multi = [run_case(c)[0] for c in multi_node_cases()]
    lines += ["", f"Multi-node cases (expanded function bodies) built only from supported operators: "
              f"{multi.count('pass')} passed, {multi.count('fail')} failed, {multi.count('skip')} skipped."]
    return "\n".join(lines) + "\n"


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="PATH", help="write the operator table here")
    parser.add_argument("--failures", action="store_true", help="list failing cases")
    args = parser.parse_args()
    if args.failures:
        for case in cases_for(s.op_type for s in registry.supported()) + multi_node_cases():
            status, detail = run_case(case)
            if status != "pass":
                print(f"{status:5} {case.name}: {detail[:200]}")
        return
    table = operator_table()
    if args.write:
        with open(args.write, "w") as f:
            f.write(table)
    else:
        print(table)


if __name__ == "__main__":
    _main()
