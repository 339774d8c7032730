"""The thread setting: OMP_WAIT_POLICY=PASSIVE before torch loads, in the CLI and the worker, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, sys; import {module}; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def _probe(module: str, policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = PROBE.format(module=module)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip()


@pytest.mark.parametrize("module", ["certify.cli", "worker.celery_app"])
def test_entry_points_set_passive_waiting_before_torch(module):
    assert _probe(module, None) == "PASSIVE False"


def test_a_policy_the_user_set_is_kept():
    assert _probe("certify.cli", "ACTIVE") == "ACTIVE False"
