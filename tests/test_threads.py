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


def test_the_benchmarks_cpu_load_is_bounded_and_stopped():
    """bench_cli/bench_threads ``--load N``: N burners while measuring, none left behind, each bounded in time."""
    import multiprocessing
    import time

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from bench_cli import burn, cpu_load

    with cpu_load(2, max_s=60):
        burners = multiprocessing.active_children()
        assert len(burners) == 2 and all(b.is_alive() for b in burners)
    assert not any(b.is_alive() for b in burners) and not multiprocessing.active_children()
    start = time.monotonic()
    burn(start + 0.05)
    assert time.monotonic() - start < 5
