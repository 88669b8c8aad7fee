"""How many threads a CPU stage uses when none are given (decode, hashing, SSCD).

The cores this process may run on (its CPU affinity: a Slurm job, ``taskset`` or a container's
cpuset may give it fewer than the machine has), at most ``OMP_NUM_THREADS`` when that is set
(the variable torch, numpy's BLAS and faiss read, so one setting limits every library), and at
most 8. Standard library only.
"""

from __future__ import annotations

import os

MAX_THREADS = 8


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS and Windows
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for a CPU stage when none are given; see the module docstring."""
    n = min(MAX_THREADS, usable_cores())
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, n)
