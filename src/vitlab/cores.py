"""How many CPU cores this process may use: the one answer data loading, training and benchmarks share."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask (a container or `taskset` may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
