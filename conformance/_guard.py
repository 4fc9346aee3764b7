"""Running one requirement in a child process with a memory cap and a wall-clock limit.

The checks that grow with N (10^5 tokens, the complexity measurements) are where a backend
with quadratic memory or time takes a whole process down: the operating system kills it, or
it never returns. Run there, the backend can only take its child down. The parent turns
whatever happens into an outcome:

| child | outcome |
| --- | --- |
| finished | the child's outcome (a `MemoryError` under the cap is a failure) |
| killed by a signal (segfault, the out-of-memory killer) | failed, naming the signal |
| past the wall-clock limit | failed, with the limit; the child's process group is killed |
| exited without an outcome | error, with the end of its standard error |

The cap is `RLIMIT_DATA` (heap and private writable mappings) rather than the address space:
CUDA and some allocators reserve far more address space than they use, which an address-space
cap would refuse. Device memory is not capped here; a backend that runs out of it raises.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._harness import Context, Measurement
from .requirements import Requirement
from .runner import Outcome, run_requirement
from .status import ERROR, FAILED

__all__ = ["Limits", "run_guarded"]

GIB = 2**30


def _default_memory() -> int:
    """8 GiB, or half the memory available now where that is less."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return min(8 * GIB, int(line.split()[1]) * 1024 // 2)
    except OSError:
        pass
    return 8 * GIB


@dataclass(frozen=True)
class Limits:
    """Caps of a guarded check: bytes of heap per child process, and seconds of wall clock."""

    memory_bytes: int = field(default_factory=_default_memory)
    seconds: float = 600.0

    def describe(self) -> str:
        return f"{self.memory_bytes / GIB:.3g} GiB of memory, {self.seconds:g} s"


def _cap_memory(limit: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform: the wall-clock limit still holds
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _outcome(requirement: Requirement, status: str, seconds: float, found: Measurement) -> Outcome:
    """The outcome of a child that left none: one measurement saying what happened to it."""
    return Outcome(requirement, status, [found], seconds, found.message)


def run_guarded(ctx: Context, requirement: Requirement, limits: Limits) -> Outcome:
    """`run_requirement` in a child process that loads the backend from `ctx.target`."""
    case = {"target": ctx.target, "profile": ctx.profile, "seed": ctx.seed,
            "limits": limits.describe()}
    with tempfile.TemporaryDirectory(prefix="zeros-guard-") as folder:
        result = Path(folder) / "outcome.json"
        job = {"target": ctx.target, "requirement": requirement.id, "profile": ctx.profile,
               "seed": ctx.seed, "dtypes": list(ctx.dtypes), "memory": limits.memory_bytes,
               "result": str(result)}
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "zeros_conformance._guard", json.dumps(job)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        try:
            _, stderr = child.communicate(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            seconds = time.perf_counter() - start
            return _outcome(requirement, FAILED, seconds, Measurement(
                seconds, limits.seconds, case, quantity="seconds", passed=False,
                message=f"did not finish within the wall-clock limit of {limits.seconds:g} s"))
        seconds = time.perf_counter() - start
        if child.returncode == 0 and result.is_file():
            outcome = Outcome.from_dict(json.loads(result.read_text()))
            outcome.seconds = seconds
            return outcome
    tail = stderr.strip()[-800:]
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        why = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return _outcome(requirement, FAILED, seconds, Measurement(
            math.inf, 0.0, case, quantity="crash", passed=False,
            message=f"the process running the check died of {name}{why}; stderr: {tail}"))
    return _outcome(requirement, ERROR, seconds, Measurement(
        math.inf, 0.0, case, quantity="exit status", passed=False,
        message=f"the process running the check exited with {child.returncode} and no "
                f"outcome; stderr: {tail}"))


def _child(job: dict) -> None:
    """In the child: cap the memory, load the backend, run the requirement, write the outcome."""
    _cap_memory(job["memory"])
    from . import registry
    from .requirements import requirement

    backend = registry.load(job["target"])
    ctx = Context(backend, target=job["target"], profile=job["profile"], seed=job["seed"],
                  dtypes=tuple(job["dtypes"]))
    outcome = run_requirement(ctx, requirement(job["requirement"]))
    Path(job["result"]).write_text(json.dumps(outcome.to_dict(), default=str))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
