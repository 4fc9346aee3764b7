"""``zeros-bench``: measure the configurations, print the table, write JSON and a plot."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from zeros_conformance import PASSED, registry

from .baselines import softmax
from .configs import CONFIGS, DEFAULT_CONFIGS, Shape
from .gate import correctness_gate
from .measure import chunk_size, derive, gemm_rate, measure_decode, measure_shape
from .report import machine, machine_line, plot, table

__all__ = ["main", "run"]


def run(backend: Any, names: Sequence[str], *, softmax_kind: str = "auto",
        repeats: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure the configurations `names`; returns the report (see `main`)."""
    device = str(getattr(backend, "device", "cpu"))
    softmax_name, make_softmax = softmax(softmax_kind, device)
    report: dict[str, Any] = {"backend": getattr(backend, "name", "backend"),
                              "machine": machine(backend), "softmax": softmax_name,
                              "chunk_size": chunk_size(backend), "configs": {}}
    log(machine_line(report["machine"]))
    report["gemm_flops"] = gemm_rate(1024 if "quick" in names else 4096, device=device)
    measured: dict[Shape, dict] = {}  # a shape in two configurations is timed once
    for name in names:
        config = CONFIGS[name]
        for shape in config.shapes:
            if shape not in measured:
                log(f"  {name}: B*H={shape.bh} N={shape.n} D={shape.d} {shape.dtype} ...")
                measured[shape] = measure_shape(backend, shape, make_softmax,
                                                repeats or config.repeats)
        rows = [dict(measured[shape]) for shape in config.shapes]
        derive(rows, report["gemm_flops"])
        report["configs"][name] = rows
    config = CONFIGS[names[0]]
    times = measure_decode(backend, config.shapes[0], config.decode, repeats or config.repeats)
    short, long = (times[str(c)]["min"] for c in config.decode)
    report["decode"] = {"bh": config.shapes[0].bh, "times": times, "ratio": long / short}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zeros-bench``; returns the exit status (1: the gate failed)."""
    parser = argparse.ArgumentParser(prog="zeros-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy",
                        help="registered name, module:attr or file.py:attr (default numpy)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help=f"configuration to run (repeatable; default {DEFAULT_CONFIGS})")
    parser.add_argument("--quick", action="store_true", help="the tiny 'quick' configuration")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement")
    parser.add_argument("--softmax", choices=("auto", "torch", "numpy"), default="auto",
                        help="softmax baseline: torch SDPA if importable (auto), or numpy")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a log-log plot (PNG)")
    args = parser.parse_args(argv)
    try:
        backend = registry.load(args.backend)
    except Exception as exc:
        print(f"zeros-bench: cannot load backend {args.backend!r}: {exc}", file=sys.stderr)
        return 2
    failures = correctness_gate(backend, args.backend)
    if failures:
        print(f"zeros-bench: backend {args.backend!r} fails the quick conformance run; no "
              "timings reported:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    names = ["quick"] if args.quick else (args.config or list(DEFAULT_CONFIGS))
    report = run(backend, names, softmax_kind=args.softmax, repeats=args.repeats)
    report["gate"] = PASSED
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
