"""A memory budget per job: the pool process's data segment may grow by at most the budget while a job runs.

Without it, a model whose run allocates more than the machine has (an allocation that passes the upload caps but
not the worker's RAM) is ended by the kernel's OOM killer: the worker process dies, the job is delivered again, and
other jobs on the machine may die with it. Under ``RLIMIT_DATA`` (private writable memory, what malloc and mmap of
anonymous memory take) the allocation itself fails: numpy raises MemoryError, torch "can't allocate memory", and
the job fails with a code while the worker goes on. The limit is the process's current data size plus the budget,
so what the process already holds (imported libraries, caches) does not count, and it is restored after the job.
"""

from __future__ import annotations

import contextlib
import os
import resource


def data_bytes() -> int:
    """The process's private writable memory (VmData), which RLIMIT_DATA caps."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def default_budget_mb() -> int:
    """Three quarters of the machine's physical memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4 // 1024**2)


@contextlib.contextmanager
def memory_budget(budget_mb: int):
    """Run the block with at most ``budget_mb`` MiB more private memory than the process holds now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_bytes() + budget_mb * 1024**2
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
