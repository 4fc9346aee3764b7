"""Two or more backends head to head in one process: ``python -m zeros_bench.versus``.

    python -m zeros_bench.versus torch numpy --n 8192 65536 --repeats 15

The backends take turns call by call on the same inputs (B*H rows of float32, random
per-step gates), so that the machine's drift touches all of them alike, and as many times at
every N, so that the minima compared across N are drawn alike. It prints, per N,
each backend's minimum and median time and its ratio to the last backend named, then each
backend's time(N_last) / time(N_first): the way to compare two backends, or one backend
before and after a change, within the noise of a shared machine; `zeros-bench` times one
backend against the baselines instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zeros_conformance import protocol, registry

__all__ = ["compare", "main"]


def _call(backend: Any, n: int, bh: int, d: int) -> Callable[[], Any]:
    """One timed call of `backend` on (bh, n, d) float32 inputs with random per-step gates."""
    rng = np.random.default_rng(0)
    q, k, v = (backend.from_numpy(rng.standard_normal((bh, n, d)), "float32") for _ in range(3))
    gates = [backend.from_numpy(rng.uniform(0.2, 1.5, (bh, n)), "float32") for _ in range(3)]
    sync = protocol.synchronize(backend)

    def call() -> None:
        backend.attention(q, k, v, first=gates[0], higher=gates[1], zero=gates[2])
        sync()

    return call


def compare(names: Sequence[str], ns: Sequence[int], repeats: Sequence[int], *, bh: int = 8,
            d: int = 64, warmups: dict[int, dict[str, float]] | None = None,
            ) -> dict[int, dict[str, list[float]]]:
    """Seconds of every call: {N: {backend name: [seconds, ...]}}, the backends alternating
    within each round after one warm-up call each; the warm-up calls' seconds go to
    `warmups` when given ({N: {backend name: seconds}}: a compiling backend compiles there)."""
    backends = {name: registry.load(name) for name in names}
    times: dict[int, dict[str, list[float]]] = {}
    for n, rounds in zip(ns, repeats):
        calls = {name: _call(backend, n, bh, d) for name, backend in backends.items()}
        first = {}
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            first[name] = time.perf_counter() - start
        if warmups is not None:
            warmups[n] = first
        times[n] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[n][name].append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeros_bench.versus",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("backends", nargs="+", help="registry names; ratios are to the last")
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 65536])
    parser.add_argument("--repeats", type=int, nargs="+", default=[15],
                        help="rounds per N (one number for all, or one per N)")
    parser.add_argument("--bh", type=int, default=8, help="rows B*H (default 8)")
    parser.add_argument("--d", type=int, default=64, help="D = Dv (default 64)")
    args = parser.parse_args(argv)
    repeats = args.repeats * len(args.n) if len(args.repeats) == 1 else args.repeats
    if len(repeats) != len(args.n) or min(repeats) < 1 or min(args.n) < 1:
        parser.error("--repeats needs one positive count, or one per --n")
    warmups: dict[int, dict[str, float]] = {}
    times = compare(args.backends, args.n, repeats, bh=args.bh, d=args.d, warmups=warmups)
    base = args.backends[-1]
    print(f"B*H={args.bh} D=Dv={args.d} float32, random per-step gates; min (median) of "
          "alternating calls")
    for n, by_name in times.items():
        low = {name: min(t) for name, t in by_name.items()}
        mid = {name: statistics.median(t) for name, t in by_name.items()}
        cells = [f"{name} {low[name] * 1e3:.1f} ({mid[name] * 1e3:.1f}) ms, "
                 f"x{low[name] / low[base]:.2f} ({mid[name] / mid[base]:.2f})"
                 for name in by_name]
        print(f"N={n}: " + "; ".join(cells))
    first, last = args.n[0], args.n[-1]
    if first != last:
        growth = [f"{name} {min(times[last][name]) / min(times[first][name]):.2f}"
                  for name in args.backends]
        print(f"time({last})/time({first}): " + ", ".join(growth))
    print("first call (compilation included, where a backend compiles): " + "; ".join(
        f"N={n} " + ", ".join(f"{name} {t * 1e3:.0f} ms" for name, t in by_name.items())
        for n, by_name in warmups.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
