"""OpenMP thread waiting for every process in which lipcert runs torch.

By default torch's OpenMP threads spin for a while after each parallel region, waiting for more work. On a machine
whose cores are shared (CI runners, a worker beside the API, several jobs) the spinning threads steal the cores the
next region needs: a converted ResNet-50 at batch 1 ran 13.7x slower than onnxruntime, and 1.39x with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep when idle). The OpenMP runtime reads the variable once, when torch loads
it, so it is set as early as possible in each entry point (CLI, worker, benchmarks), and never over a value the
user chose.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def use_passive_wait(env: dict | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``env`` (default: this process's environment) unless already set.

    Returns whether the setting takes effect here: False when torch was imported before the call, since its
    OpenMP runtime has then already read the variable (child processes still inherit it).
    """
    target = os.environ if env is None else env
    target.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return env is not None or "torch" not in sys.modules
