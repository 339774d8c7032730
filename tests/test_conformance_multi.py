"""onnx's multi-node backend cases (expanded function bodies) built only from supported operators all pass."""

from __future__ import annotations

import pytest

from certify.conformance import multi_node_cases
from tests.onnx_builders import assert_case_passes

CASES = multi_node_cases()


def test_there_are_multi_node_cases():
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_multi_node_case(case):
    assert_case_passes(case)
