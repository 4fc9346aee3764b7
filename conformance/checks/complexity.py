"""Checks of spec section 4: time and memory grow linearly; decode steps cost O(1).

Each quantity is measured at N and 8N in one run: a linear method shows about 8x, a
quadratic one about 64x, and the suite fails ratios above 24. Timings take the minimum of
repeats (noise only ever adds time). Memory is the peak resident growth during one call,
measured in a fresh subprocess with the kernel's peak counter reset, or by the backend's own
``memory_peak`` where it has one (device memory). A floor on the small run's memory keeps
allocator granularity from inflating the ratio of a linear method.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._harness import Context, Measurement, NotApplicable, check, random_inputs

RATIO_LIMIT = 24.0
"""Between the 8 of linear and the 64 of quadratic growth (geometric mean ~22.6)."""
DECODE_LIMIT = 4.0
MEMORY_FLOOR = 4 * 2**20
"""Bytes: the small run's growth is counted as at least this much."""


def _dtype(ctx: Context) -> str:
    return "float32" if "float32" in ctx.dtypes else ctx.precise_dtype()


def _inputs(ctx: Context, n: int, dtype: str) -> tuple[Any, ...]:
    x = random_inputs(np.random.default_rng(n), (2,), n, 32, 32, gates="scalar")
    b = ctx.backend
    return tuple(b.from_numpy(x[name], dtype) for name in ("q", "k", "v", "logits"))


def _best_times(ctx: Context, sizes: tuple[int, ...], repeats: int) -> list[float]:
    """Minimum time of one call at each size. Sizes are timed in turn within each repeat, so
    a burst of load on the machine falls on all of them alike."""
    dtype = _dtype(ctx)
    b = ctx.backend
    calls = []
    for n in sizes:
        q, k, v, s = _inputs(ctx, n, dtype)
        calls.append(lambda q=q, k=k, v=v, s=s: b.to_numpy(b.attention(q, k, v, logits=s)))
    best = [float("inf")] * len(sizes)
    for _ in range(repeats + 1):  # the first round warms up
        for j, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[j] = min(best[j], time.perf_counter() - start)
    return best


def _sizes(ctx: Context) -> tuple[int, int]:
    n = 512 if ctx.quick else 1024
    return n, 8 * n


@check("ZS-ON-TIME")
def time_is_linear(ctx: Context) -> Iterator[Measurement]:
    small, large = _sizes(ctx)
    t_small, t_large = _best_times(ctx, (small, large), repeats=5 if ctx.quick else 7)
    case = {"B": [2], "D": 32, "Dv": 32, "N": [small, large], "dtype": _dtype(ctx),
            "seconds": [round(t_small, 6), round(t_large, 6)]}
    yield Measurement(t_large / t_small, RATIO_LIMIT, case, quantity="time(8N)/time(N)")


_PROBE = r"""
import json, sys
import numpy as np
from zeros_conformance import registry
from zeros_conformance.checks.complexity import _inputs, _Probe
backend = registry.load(sys.argv[1])
print(json.dumps(_Probe(backend).peak(int(sys.argv[2]), sys.argv[3])))
"""


class _Probe:
    """Peak resident-memory growth of one call, read from /proc in this process."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def peak(self, n: int, dtype: str) -> int:
        ctx = Context(self.backend, target="")
        q, k, v, s = _inputs(ctx, n, dtype)
        small = _inputs(ctx, 64, dtype)
        self.backend.attention(small[0], small[1], small[2], logits=small[3])  # load lazily
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak (VmHWM) to the current resident size
        before = self._status("VmRSS:")
        out = self.backend.attention(q, k, v, logits=s)
        peak = self._status("VmHWM:")
        del out
        return peak - before


def _peak_bytes(ctx: Context, n: int) -> int:
    dtype = _dtype(ctx)
    own = getattr(ctx.backend, "memory_peak", None)
    if callable(own):
        q, k, v, s = _inputs(ctx, n, dtype)
        return int(own(lambda: ctx.backend.attention(q, k, v, logits=s)))
    if not ctx.target or sys.platform != "linux":
        raise NotApplicable("memory needs a backend loadable by name (for a subprocess) on "
                            "Linux, or a `memory_peak` method")
    done = subprocess.run([sys.executable, "-c", _PROBE, ctx.target, str(n), dtype],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-500:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


@check("ZS-ON-MEMORY")
def memory_is_linear(ctx: Context) -> Iterator[Measurement]:
    small, large = (1024, 8192)
    m_small, m_large = _peak_bytes(ctx, small), _peak_bytes(ctx, large)
    case = {"B": [2], "D": 32, "Dv": 32, "N": [small, large], "dtype": _dtype(ctx),
            "peak_bytes": [m_small, m_large], "floor_bytes": MEMORY_FLOOR}
    yield Measurement(m_large / max(m_small, MEMORY_FLOOR), RATIO_LIMIT, case,
                      quantity="memory(8N)/memory(N)")


def _decode_time(ctx: Context, context: int, repeats: int) -> float:
    dtype = _dtype(ctx)
    b = ctx.backend
    x = random_inputs(np.random.default_rng(context), (1,), context + 1, 32, 32, gates="scalar")
    arrays = {name: b.from_numpy(x[name], dtype) for name in ("q", "k", "v", "logits")}
    prefix = {name: a[..., :context, :] if a.ndim == 3 else a[..., :context]
              for name, a in arrays.items()}
    step = {name: a[..., context:, :] if a.ndim == 3 else a[..., context:]
            for name, a in arrays.items()}
    _, state = b.attention(prefix["q"], prefix["k"], prefix["v"], logits=prefix["logits"],
                           return_state=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out, _ = b.attention(step["q"], step["k"], step["v"], logits=step["logits"],
                             state=state, return_state=True)
        b.to_numpy(out)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


@check("ZS-ON-DECODE")
def decode_is_constant(ctx: Context) -> Iterator[Measurement]:
    short, long = 1024, (16384 if ctx.quick else 65536)
    repeats = 30
    t_short, t_long = _decode_time(ctx, short, repeats), _decode_time(ctx, long, repeats)
    case = {"context": [short, long], "D": 32, "Dv": 32, "dtype": _dtype(ctx),
            "seconds": [round(t_short, 7), round(t_long, 7)]}
    yield Measurement(t_long / t_short, DECODE_LIMIT, case, quantity="time(long)/time(short)")
