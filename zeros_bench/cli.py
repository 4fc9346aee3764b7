"""``zeros-bench``: measure the configurations, print the table, write JSON and a plot."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from zeros_conformance import PASSED, protocol, registry

from .baselines import softmax
from .configs import CONFIGS, DEFAULT_CONFIGS, PACKED, Config, Packed, Shape
from .gate import correctness_gate
from .measure import derive, gemm_rate, measure_decode, measure_shape
from .report import machine, machine_line, plot, table
from .varlen import measure_varlen, not_claimed

__all__ = ["main", "run"]


def run(backend: Any, configs: Mapping[str, Config], *, softmax_kind: str = "auto",
        repeats: int | None = None, varlen: Packed | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Measure the configurations (name -> `Config`); returns the report (see `main`). The
    decode step is timed for the first shape when it is causal, and with `varlen` the packed
    batch (`zeros_bench.varlen`; the report's "varlen" is None without it)."""
    device = protocol.device(backend)
    softmax_name, make_softmax = softmax(softmax_kind, device)
    report: dict[str, Any] = {"backend": protocol.name(backend),
                              "machine": machine(backend), "softmax": softmax_name,
                              "chunk_size": protocol.chunk_size(backend),
                              "slab_size": protocol.slab_size(backend), "configs": {}}
    log(machine_line(report["machine"]))
    report["gemm_flops"] = gemm_rate(1024 if "quick" in configs else 4096, device=device)
    measured: dict[Shape, dict] = {}  # a shape in two configurations is timed once
    for name, config in configs.items():
        for shape in config.shapes:
            if shape not in measured:
                mode = "causal" if shape.causal else "bidirectional"
                log(f"  {name}: B*H={shape.bh} N={shape.n} D={shape.d} Dv={shape.dv} "
                    f"{shape.dtype} {mode}, {shape.gates} gates ...")
                measured[shape] = measure_shape(backend, shape, make_softmax,
                                                repeats or config.repeats)
        rows = [dict(measured[shape]) for shape in config.shapes]
        derive(rows, report["gemm_flops"])
        report["configs"][name] = rows
    config = next(iter(configs.values()))
    report["decode"] = None
    if config.shapes[0].causal:
        times = measure_decode(backend, config.shapes[0], config.decode,
                               repeats or config.repeats)
        short, long = (times[str(c)]["min"] for c in config.decode)
        report["decode"] = {"bh": config.shapes[0].bh, "times": times, "ratio": long / short}
    report["varlen"] = None if varlen is None else measure_varlen(backend, varlen, log=log)
    return report


def _configs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Config]:
    """The configurations to run: named ones, or the user's `--shape`s ("custom"), with
    `--dtype`, `--gates` and the mode applied to every shape where given."""
    options = {key: value for key, value in (("dtype", args.dtype), ("gates", args.gates),
                                             ("causal", args.causal)) if value is not None}
    if args.shape:
        try:
            shapes = tuple(Shape.parse(text, **options) for text in args.shape)
        except ValueError as exc:
            parser.error(f"--shape: {exc}")
        return {"custom": Config(shapes, decode=(1024, 16384))}
    names = ["quick"] if args.quick else (args.config or list(DEFAULT_CONFIGS))
    return {name: Config(tuple(replace(shape, **options) for shape in CONFIGS[name].shapes),
                         CONFIGS[name].decode, CONFIGS[name].repeats) for name in names}


def _packed(args: argparse.Namespace) -> Packed | None:
    """The packed batch of `--varlen` (the quick one with `--quick`), with `--dtype`, the mode
    and `--repeats` applied where given; None without `--varlen`."""
    if not args.varlen:
        return None
    options = {key: value for key, value in (("dtype", args.dtype), ("causal", args.causal),
                                             ("repeats", args.repeats)) if value is not None}
    return replace(PACKED["quick" if args.quick else "full"], **options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zeros-bench``; returns the exit status (1: the gate failed)."""
    parser = argparse.ArgumentParser(prog="zeros-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy",
                        help="registered name, module:attr or file.py:attr (default numpy)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help=f"configuration to run (repeatable; default {DEFAULT_CONFIGS})")
    parser.add_argument("--quick", action="store_true", help="the tiny 'quick' configuration")
    parser.add_argument("--shape", action="append", metavar="BH,N,D[,Dv]",
                        help="time this shape instead of the named configurations "
                             "(repeatable; Dv = D when absent)")
    parser.add_argument("--dtype", choices=("float16", "float32", "float64"),
                        help="dtype of every shape (default: the configuration's, float32)")
    parser.add_argument("--gates", choices=("default", "random"),
                        help="gates of every shape: default (first = higher) or random "
                             "per-step gates")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--causal", dest="causal", action="store_const", const=True,
                      help="causal attention (the default)")
    mode.add_argument("--bidirectional", dest="causal", action="store_const", const=False,
                      help="bidirectional attention (no decode step is timed)")
    parser.add_argument("--varlen", action="store_true",
                        help="also time a packed batch (backends claiming \"varlen\"): T tokens "
                             "in sequences of random lengths with cu_seqlens, against one dense "
                             "sequence of T tokens and padding to the longest sequence")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement")
    parser.add_argument("--softmax", choices=("auto", "torch", "numpy"), default="auto",
                        help="softmax baseline: torch SDPA if importable (auto), or numpy")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a log-log plot (PNG)")
    args = parser.parse_args(argv)
    configs = _configs(args, parser)
    try:
        backend = registry.load(args.backend)
    except Exception as exc:
        print(f"zeros-bench: cannot load backend {args.backend!r}: {exc}", file=sys.stderr)
        return 2
    packed = _packed(args)
    if packed is not None and not_claimed(backend):
        print(f"zeros-bench: --varlen: {not_claimed(backend)}; no packed timings",
              file=sys.stderr)
    failures = correctness_gate(backend, args.backend)
    if failures:
        print(f"zeros-bench: backend {args.backend!r} fails the quick conformance run; no "
              "timings reported:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    report = run(backend, configs, softmax_kind=args.softmax, repeats=args.repeats,
                 varlen=packed)
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
