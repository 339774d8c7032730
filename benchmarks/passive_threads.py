"""Imported first by the benchmarks that run torch: lipcert's thread setting (``certify.threads``) applied before
torch loads its OpenMP runtime, as the CLI and the worker do. Set ``OMP_WAIT_POLICY`` yourself to compare."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from certify.threads import use_passive_wait  # noqa: E402

use_passive_wait()
