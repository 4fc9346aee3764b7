"""Checks of spec section 4: time and memory grow linearly; a decode step and the state are O(1).

Each quantity is measured at two sizes in one run: from N to 8N a linear method shows about
8x, a quadratic one about 64x, and the suite fails ratios above 24. Timings take the minimum
of repeats with the sizes timed in turn (noise only ever adds time, and a burst of load falls
on both sizes alike). Memory is the peak resident growth during one call, measured in a fresh
subprocess with the kernel's peak counter reset, or by the backend's own ``memory_peak`` where
it has one (device memory); besides its growth it is bounded against the bytes of the call's
own arrays. The state is measured by the bytes of the arrays it holds.

Every check here grows with N, so each runs guarded (`zeros_conformance._guard`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import protocol
from .._harness import Context, Measurement, NotApplicable, check, random_inputs

RATIO_LIMIT = 24.0
"""Between the 8 of linear and the 64 of quadratic growth (geometric mean ~22.6)."""
TIME_BUDGET = 20.0
"""Seconds of timed rounds after which ZS-ON-TIME starts no further round."""
DECODE_LIMIT = 4.0
"""Decode step at the long context against the short one (64x or 16x the tokens)."""
MIB = 2**20
MEMORY_FLOOR = 4 * MIB
"""Bytes: the small run's growth is counted as at least this much."""
MEMORY_FACTOR = 6
"""The peak may reach this many times the bytes of the call's inputs and output..."""
MEMORY_ALLOWANCE = 16 * MIB
"""...plus this much for the allocator, the interpreter and fixed-size workspaces."""
MEMORY_D = 64
"""D = Dv of the memory check: an (N, D, Dv) array is then 16x the bytes of q, k, v, out."""
STATE_LIMIT = 2.0
"""Bytes of a state after many tokens against those after 1k (counted as at least 1 KiB)."""


def _dtype(ctx: Context) -> str:
    return "float32" if "float32" in ctx.dtypes else ctx.precise_dtype()


def _inputs(ctx: Context, n: int, dtype: str, d: int = 32) -> tuple[Any, ...]:
    """q, k (2, n, d), v (2, n, d) and logits (2, n) in the backend's arrays of `dtype`."""
    x = random_inputs(np.random.default_rng(n), (2,), n, d, d, gates="scalar")
    b = ctx.backend
    return tuple(b.from_numpy(x[name], dtype) for name in ("q", "k", "v", "logits"))


def _best_times(ctx: Context, sizes: tuple[int, ...], repeats: int) -> list[float]:
    """Minimum time of one call at each size (`best_times`)."""
    dtype = _dtype(ctx)
    b = ctx.backend
    calls = []
    for n in sizes:
        q, k, v, s = _inputs(ctx, n, dtype)
        calls.append(lambda q=q, k=k, v=v, s=s: b.to_numpy(ctx.attention(q, k, v, logits=s)))
    return best_times(calls, repeats)


def best_times(calls: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Minimum time of each call. The calls are timed in turn within each repeat, so a burst
    of load on the machine falls on all of them alike. Past `TIME_BUDGET` seconds no further
    round starts (after the warm-up and one more): a backend that slow is far from the limit,
    and noise is small against its calls."""
    best = [float("inf")] * len(calls)
    begin = time.perf_counter()
    for round_ in range(repeats + 1):  # the first round warms up
        if round_ >= 2 and time.perf_counter() - begin > TIME_BUDGET:
            break
        for j, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[j] = min(best[j], time.perf_counter() - start)
    return best


def _sizes(ctx: Context) -> tuple[int, int]:
    n = 512 if ctx.quick else 1024
    return n, 8 * n


@check("ZS-ON-TIME", grows=True)
def time_is_linear(ctx: Context) -> Iterator[Measurement]:
    small, large = _sizes(ctx)
    t_small, t_large = _best_times(ctx, (small, large), repeats=5 if ctx.quick else 7)
    case = {"B": [2], "D": 32, "Dv": 32, "N": [small, large], "dtype": _dtype(ctx),
            "seconds": [round(t_small, 6), round(t_large, 6)]}
    yield Measurement(t_large / t_small, RATIO_LIMIT, case, quantity="time(8N)/time(N)")


_PROBE = r"""
import json, sys
from zeros_conformance import registry
from zeros_conformance.checks.complexity import _Probe
backend = registry.load(sys.argv[1])
try:
    print(json.dumps(_Probe(backend).peak(int(sys.argv[2]), sys.argv[3])))
except MemoryError as exc:
    print(json.dumps(f"MemoryError: {exc}"))
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
        q, k, v, s = _inputs(ctx, n, dtype, MEMORY_D)
        small = _inputs(ctx, 64, dtype, MEMORY_D)
        self.backend.attention(small[0], small[1], small[2], logits=small[3])  # load lazily
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak (VmHWM) to the current resident size
        before = self._status("VmRSS:")
        out = self.backend.attention(q, k, v, logits=s)
        peak = self._status("VmHWM:")
        del out
        return peak - before


def _peak_bytes(ctx: Context, n: int) -> tuple[float, str]:
    """Peak bytes of one call at N = n beyond what was allocated before it, and how the
    measurement ended (inf with the reason when the call ran out of memory)."""
    dtype = _dtype(ctx)
    own = protocol.memory_peak(ctx.backend)
    if own is not None:
        q, k, v, s = _inputs(ctx, n, dtype, MEMORY_D)
        return float(own(lambda: ctx.attention(q, k, v, logits=s))), "memory_peak"
    if not ctx.target or sys.platform != "linux":
        raise NotApplicable("memory needs a backend loadable by name (for a subprocess) on "
                            "Linux, or a `memory_peak` method")
    done = subprocess.run([sys.executable, "-c", _PROBE, ctx.target, str(n), dtype],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-500:]}")
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(peak, str):
        return math.inf, f"the call ran out of memory ({peak})"
    return float(peak), "resident growth of a fresh process"


def _call_bytes(ctx: Context, n: int) -> int:
    """Bytes of a memory-check call's own arrays: q, k, v, logits and the output."""
    itemsize = np.dtype("float16" if _dtype(ctx) == "bfloat16" else _dtype(ctx)).itemsize
    return itemsize * 2 * n * (4 * MEMORY_D + 1)


@check("ZS-ON-MEMORY", grows=True)
def memory_is_linear(ctx: Context) -> Iterator[Measurement]:
    """Growth from N to 8N, and each peak against the bytes of the call's arrays."""
    sizes = (1024, 8192)
    measured = [_peak_bytes(ctx, n) for n in sizes]
    peaks = [peak for peak, _ in measured]
    case = {"B": [2], "D": MEMORY_D, "Dv": MEMORY_D, "N": list(sizes), "dtype": _dtype(ctx),
            "peak_bytes": peaks, "floor_bytes": MEMORY_FLOOR}
    yield Measurement(peaks[1] / max(peaks[0], MEMORY_FLOOR), RATIO_LIMIT, case,
                      quantity="memory(8N)/memory(N)", message=measured[1][1])
    for n, (peak, how) in zip(sizes, measured):
        io = _call_bytes(ctx, n)
        bound = MEMORY_FACTOR * io + MEMORY_ALLOWANCE
        yield Measurement(peak / MIB, bound / MIB,
                          {"B": [2], "N": n, "D": MEMORY_D, "Dv": MEMORY_D, "dtype": _dtype(ctx),
                           "call_bytes": io, "bound": f"{MEMORY_FACTOR} x call_bytes + "
                                                     f"{MEMORY_ALLOWANCE // MIB} MiB"},
                          quantity="peak MiB", message=how)


def _decode_setup(ctx: Context, context: int) -> tuple[Any, Callable[[Any], Any]]:
    """The state after a prefill of `context` tokens (B = 1, D = Dv = 32) and a function
    making one decode step from a given state; it returns ``(output, state)``."""
    dtype = _dtype(ctx)
    b = ctx.backend
    x = random_inputs(np.random.default_rng(context), (1,), context + 1, 32, 32, gates="scalar")
    arrays = {name: b.from_numpy(x[name], dtype) for name in ("q", "k", "v", "logits")}
    prefix = {name: a[..., :context, :] if a.ndim == 3 else a[..., :context]
              for name, a in arrays.items()}
    step = {name: a[..., context:, :] if a.ndim == 3 else a[..., context:]
            for name, a in arrays.items()}
    _, state = ctx.attention(prefix["q"], prefix["k"], prefix["v"], logits=prefix["logits"],
                             return_state=True)

    def decode(state: Any) -> Any:
        out, new = ctx.attention(step["q"], step["k"], step["v"], logits=step["logits"],
                                 state=state, return_state=True)
        b.to_numpy(out)
        return out, new

    return state, decode


def _contexts(ctx: Context) -> tuple[int, int]:
    return 1024, (16384 if ctx.quick else 65536)


@check("ZS-ON-DECODE", grows=True)
def decode_is_constant(ctx: Context) -> Iterator[Measurement]:
    """One-token steps after a short and a long prefill, timed in turn; minimum of repeats."""
    contexts = _contexts(ctx)
    steps = [_decode_setup(ctx, n) for n in contexts]
    best = [math.inf, math.inf]
    for _ in range(31):  # the first round warms up
        for j, (state, decode) in enumerate(steps):
            start = time.perf_counter()
            decode(state)
            best[j] = min(best[j], time.perf_counter() - start)
    case = {"context": list(contexts), "D": 32, "Dv": 32, "dtype": _dtype(ctx),
            "seconds": [round(t, 7) for t in best]}
    yield Measurement(best[1] / best[0], DECODE_LIMIT, case, quantity="time(long)/time(short)")


_CODE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
"""Objects a state may refer to that are code, not data: not counted, not followed."""


def state_bytes(state: Any) -> int:
    """Bytes of the arrays reachable from `state` through attributes, slots and containers.

    A view counts its whole buffer (the base of a NumPy array, the storage of a tensor), once
    however many views share it: what a state keeps alive is what it costs. Other objects
    count their `sys.getsizeof`.
    """
    seen: dict[int, Any] = {}  # holding each object keeps its id from being reused
    buffers: dict[Any, int] = {}
    other = 0
    stack = [state]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen[id(x)] = x
        if isinstance(x, _CODE):
            continue
        if isinstance(x, np.ndarray):
            root = x
            while isinstance(root.base, np.ndarray):
                root = root.base
            buffers[("numpy", id(root))] = root.nbytes
            if x.dtype == object:
                stack.extend(x.ravel().tolist())
        elif callable(getattr(x, "untyped_storage", None)):  # torch
            storage = x.untyped_storage()
            buffers[("torch", x.device.type, storage.data_ptr())] = storage.nbytes()
        elif hasattr(x, "shape") and isinstance(getattr(x, "nbytes", None), int):
            buffers[("array", id(x))] = x.nbytes  # CuPy, JAX and other array libraries
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
        elif hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
            stack.extend(vars(x).values() if hasattr(x, "__dict__") else ())
            stack.extend(getattr(x, slot) for cls in type(x).__mro__
                         for slot in getattr(cls, "__slots__", ()) if hasattr(x, slot))
        else:
            other += sys.getsizeof(x)
    return sum(buffers.values()) + other


@check("ZS-ON-STATE", grows=True)
def state_does_not_grow(ctx: Context) -> Iterator[Measurement]:
    """Bytes of the state after 1k tokens, after 256 more decode steps, and after 64k."""
    short, long = _contexts(ctx)
    state, decode = _decode_setup(ctx, short)
    base = state_bytes(state)
    stepped = state
    for _ in range(256):
        _, stepped = decode(stepped)
    long_state, _ = _decode_setup(ctx, long)
    for label, later in ((f"{short} tokens, then 256 decode steps", stepped),
                         (f"{long} tokens", long_state)):
        size = state_bytes(later)
        case = {"D": 32, "Dv": 32, "dtype": _dtype(ctx), "bytes": [base, size],
                "states": [f"{short} tokens", label]}
        yield Measurement(size / max(base, 1024), STATE_LIMIT, case,
                          quantity="state bytes / bytes at 1k")
