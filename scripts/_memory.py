"""Memory figures of the current process for the benchmarks, from ``/proc/self/status``.

Peak RSS is ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: Linux carries the parent's peak into a
child across fork and exec, so a benchmark phase started from a large driver would report the
driver's peak as its own.
"""

from __future__ import annotations

import resource
from pathlib import Path

_KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def memory_status() -> dict[str, float]:
    """``VmRSS``, ``RssAnon``, ``RssFile`` and ``peak`` (``VmHWM``) of this process, in MiB."""
    out: dict[str, float] = {}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:  # not Linux: only the peak, from getrusage
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key in _KEYS:
            out[key] = int(value.split()[0]) / 1024.0  # KiB -> MiB
    out["peak"] = out.pop("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB."""
    return memory_status()["peak"]
