"""Shared fixtures: paths to the example model and small ONNX builders."""

from __future__ import annotations

import os

import pytest
from service_fixtures import digits_dataset, digits_model, service, tiny_model  # noqa: F401  (service tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_MODEL = os.path.join(ROOT, "examples", "digits_mlp.onnx")
EXAMPLE_DATA = os.path.join(ROOT, "examples", "digits_test.npz")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="deep sweeps (the soundness harness's deep profile)")


def pytest_configure(config):
    if config.getoption("--slow"):
        os.environ["HYPOTHESIS_PROFILE"] = "deep"


@pytest.fixture
def example_model_path() -> str:
    return EXAMPLE_MODEL


@pytest.fixture
def example_model_bytes() -> bytes:
    with open(EXAMPLE_MODEL, "rb") as f:
        return f.read()
