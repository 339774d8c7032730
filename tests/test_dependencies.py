"""The environment the tests run in satisfies pyproject.toml's dependency ranges.

A range can carry a reason beyond compatibility: ml_dtypes 0.7.0, which onnx imports at start, takes about 1.2 CPU s
to import (0.6.0: 0.02 s), a fixed cost of every lipcert command. A venv that drifted outside the ranges would time
and test something a fresh install does not get.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENTS = [Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=lambda r: r.name)
def test_installed_version_is_in_the_declared_range(requirement):
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{requirement.name} is a dependency but is not installed")
    assert requirement.specifier.contains(version, prereleases=True), f"{requirement.name} {version}: {requirement}"
