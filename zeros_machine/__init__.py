"""zeros_machine: what the machine offers this process, described once.

Shared by the NumPy backend (worker count, BLAS threads), the conformance report and
`zeros-bench` (the machine line), so that they count CPUs and describe BLAS the same way.
It imports nothing of the other packages; threadpoolctl is optional.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import numpy as np

__all__ = ["blas_limitable", "blas_threads", "cpus", "describe", "line"]

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS")
"""Environment variables that change what BLAS does, recorded when set."""

_CONTROLLER: Any = None


def cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, or None if not installed.

    Made once: building it inspects every loaded library.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER or None


def blas_limitable() -> bool:
    """Whether `blas_threads` can limit BLAS here (threadpoolctl is installed)."""
    return _controller() is not None


def blas_threads(limit: int) -> contextlib.AbstractContextManager:
    """BLAS limited to `limit` threads while the context is open (process-wide), or nothing
    when threadpoolctl is not installed.

    Small products (a chunk's, at most C x (C + 3D) by (C + 3D) x Dv) run faster on one BLAS
    thread: a BLAS that splits them spends more time waking its threads than computing (on a
    2-CPU VM the reference's chunk products ran 3-10x slower with two OpenBLAS threads).
    """
    controller = _controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=limit, user_api="blas")


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for entry in info:
                if entry.startswith("model name"):
                    return entry.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """Platform, processor, CPUs, Python, NumPy, the BLAS libraries and their environment."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _processor(),
        "cpus": cpus(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas_env": {key: os.environ[key] for key in BLAS_ENV if key in os.environ},
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["blas"] = "unknown (threadpoolctl is not installed)"
    else:
        info["blas"] = [
            {key: lib.get(key) for key in ("internal_api", "version", "architecture",
                                           "num_threads", "threading_layer")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"
        ]
    return info


def line(info: dict[str, Any]) -> str:
    """`describe`'s dictionary on one line, for reports."""
    blas = info["blas"]
    if isinstance(blas, list):
        blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, "
                         f"{b['num_threads']} threads)" for b in blas) or "none found"
    env = " ".join(f"{k}={v}" for k, v in info["blas_env"].items()) or "no BLAS env"
    return (f"{info['processor']}, {info['cpus']} CPUs; {info['platform']}; Python "
            f"{info['python']}; numpy {info['numpy']}; BLAS: {blas}; {env}")
