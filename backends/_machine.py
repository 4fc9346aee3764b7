"""What the machine offers this process (shared by the backends and the bench)."""

from __future__ import annotations

import os

__all__ = ["cpus"]


def cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
