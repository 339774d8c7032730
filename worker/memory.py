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


def container_limit_bytes(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of the container this process runs in: its cgroup's ``memory.max`` (cgroup v2) or
    ``memory/memory.limit_in_bytes`` (v1), as container runtimes mount them; None when there is none."""
    for path in (os.path.join(root, "memory.max"), os.path.join(root, "memory", "memory.limit_in_bytes")):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text == "max":
            return None
        value = int(text)
        return value if value < 1 << 60 else None  # v1 writes "no limit" as a huge page-aligned number
    return None


def default_budget_mb(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Three quarters of the machine's physical memory, or of the container's memory limit when that is lower (a
    pod limited to 16 GiB on a 512 GiB node would otherwise be killed by the kernel long before the budget)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = container_limit_bytes(cgroup_root)
    return int(min(total, limit or total) * 3 // 4 // 1024**2)


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
