"""The GPU check: one command for a CUDA machine, at most 8 minutes on one GPU.

    python -m zeros_bench.gpu_check --out gpu-check      (or: zeros-gpu-check)

1. The conformance suite (quick profile) on the GPU backends ``torch-cuda``, ``triton`` and
   ``cupy``, each in its own process with a time limit.
2. Timings of those backends against causal softmax attention (torch SDPA, which takes
   FlashAttention where it can) and, where ``fla`` (the package ``fla-core``) imports,
   flash-linear-attention's ``chunk_linear_attn`` and ``chunk_simple_gla``: B*H in {8, 32},
   N from 1k to 64k, D = Dv in {64, 128}, bfloat16 and float32, forward and forward+backward,
   smallest shapes first, until the time is spent.
3. One JSON file (``gpu-check.json``) and one plot per (B*H, D, dtype, pass).

Without a CUDA device every GPU part is skipped with a message and the JSON says so;
``--device cpu`` rehearses the whole harness on the CPU with small shapes (the tests do).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zeros_machine
from zeros_conformance import protocol, registry

from .measure import timed

__all__ = ["GRID", "REHEARSAL", "Grid", "main"]

GPU_BACKENDS = ("torch-cuda", "triton", "cupy")
BASELINES = ("sdpa", "fla chunk_linear_attn", "fla chunk_simple_gla")


@dataclass(frozen=True)
class Grid:
    """The shapes to time, smallest first, and the backends to check."""

    backends: tuple[str, ...]
    bh: tuple[int, ...]
    n: tuple[int, ...]
    d: tuple[int, ...]
    dtypes: tuple[str, ...]
    device: str
    only: str | None = None  # one requirement ID for the conformance runs (rehearsal)

    def shapes(self) -> list[tuple[int, int, int, str, bool]]:
        """(B*H, N, D, dtype, backward) in the order they are timed."""
        grid = itertools.product(self.bh, self.n, self.d, self.dtypes, (False, True))
        return sorted(grid, key=lambda s: (s[0] * s[1] * s[2], s[1], s[4]))


GRID = Grid(GPU_BACKENDS, (8, 32), (1024, 4096, 16384, 65536), (64, 128),
            ("bfloat16", "float32"), "cuda")
REHEARSAL = Grid(("torch",), (2,), (128, 256), (16,), ("float32",), "cpu",
                 only="ZS-ACC-REFERENCE")


def conformance(name: str, out: Path, limit_s: float, only: str | None) -> dict:
    """``zeros-conformance run --quick`` of one backend in a child process: its status,
    exit code, seconds and report path (or why it did not finish)."""
    report = out / f"conformance-{name}.json"
    command = [sys.executable, "-m", "zeros_conformance.cli", "run", "--backend", name,
               "--quick", "--report", str(report)] + (["--only", only] if only else [])
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "seconds": limit_s, "limit_s": limit_s}
    lines = (done.stdout + done.stderr).strip().splitlines()
    status = {0: "conforms", 1: "does not conform"}.get(done.returncode, "error")
    return {"status": status, "exit": done.returncode, "seconds": time.monotonic() - start,
            "report": str(report) if report.exists() else None, "last_line": lines[-1:]}


def _torch_inputs(bh: int, n: int, d: int, dtype: str, device: str,
                  layout: str) -> list[Any]:
    """q, k, v of shape (B*H, N, D) ("rows"), (1, B*H, N, D) ("heads") or (1, N, B*H, D)
    ("tokens"), requiring gradients."""
    import torch

    shape = {"rows": (bh, n, d), "heads": (1, bh, n, d), "tokens": (1, n, bh, d)}[layout]
    make = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(shape, generator=make, device=device,
                        dtype=getattr(torch, dtype)).requires_grad_(True) for _ in range(3)]


def candidate(name: str, grid: Grid) -> tuple[Callable | None, str]:
    """``make(bh, n, d, dtype) -> (forward, backward or None)`` for one backend or baseline,
    or None and the reason it cannot run here."""
    import torch

    device = grid.device
    if name in BASELINES:
        if name == "sdpa":
            layout, fn = "heads", lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True)
        else:
            try:
                from fla.ops.linear_attn import chunk_linear_attn
                from fla.ops.simple_gla import chunk_simple_gla
            except ImportError as error:
                return None, f"fla-core is not importable ({error})"
            layout = "tokens"
            if name.endswith("chunk_linear_attn"):
                def fn(q: Any, k: Any, v: Any) -> Any:
                    return chunk_linear_attn(q, k, v, normalize=False)[0]
            else:
                def fn(q: Any, k: Any, v: Any) -> Any:
                    g = torch.nn.functional.logsigmoid(torch.ones(q.shape[:3], device=q.device))
                    return chunk_simple_gla(q, k, v, g=g)[0]
    else:
        try:
            backend = registry.load(name)
        except Exception as error:  # a missing optional package or device
            return None, f"{type(error).__name__}: {error}"
        if name == "cupy":
            return _cupy(backend), ""
        layout, fn = "rows", backend.attention

    def make(bh: int, n: int, d: int, dtype: str) -> tuple[Callable, Callable | None]:
        q, k, v = _torch_inputs(bh, n, d, dtype, device, layout)
        grad = torch.randn_like(q)

        def forward() -> Any:
            with torch.no_grad():
                fn(q, k, v)
            _sync(device)

        def backward() -> Any:
            fn(q, k, v).backward(grad)
            _sync(device)

        return forward, backward

    return make, ""


def _cupy(backend: Any) -> Callable:
    """The CuPy backend on CuPy arrays (float32 only: CuPy has no bfloat16; no gradients)."""
    import cupy
    import numpy as np

    def make(bh: int, n: int, d: int, dtype: str) -> tuple[Callable | None, None]:
        if dtype != "float32":
            return None, None
        q, k, v = (backend.from_numpy(np.random.default_rng(i).standard_normal((bh, n, d)),
                                      dtype) for i in range(3))

        def forward() -> Any:
            backend.attention(q, k, v)
            cupy.cuda.runtime.deviceSynchronize()

        return forward, None

    return make


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench(grid: Grid, deadline: float, log: Callable[[str], None]) -> tuple[list, dict]:
    """Rows {name, bh, n, d, dtype, backward, seconds} (None with a reason when a case
    failed, was not supported or ran out of time), and why each skipped candidate was."""
    makers, skipped = {}, {}
    for name in (*grid.backends, *BASELINES):
        make, why = candidate(name, grid)
        if make is None:
            skipped[name] = why
            log(f"  {name}: skipped, {why}")
        else:
            makers[name] = make
    rows = []
    for bh, n, d, dtype, backward in grid.shapes():
        for name, make in makers.items():
            row = {"name": name, "bh": bh, "n": n, "d": d, "dtype": dtype,
                   "backward": backward, "seconds": None}
            rows.append(row)
            if time.monotonic() > deadline:
                row["why"] = "out of time"
                continue
            try:
                forward, train = make(bh, n, d, dtype)
                fn = train if backward else forward
                if fn is None:
                    row["why"] = "not supported"
                    continue
                budget = max(0.5, min(5.0, deadline - time.monotonic()))
                row["seconds"] = timed(fn, repeats=10, budget_s=budget)["min"]
            except Exception as error:  # out of memory, an unsupported dtype, ...
                row["why"] = f"{type(error).__name__}: {str(error)[:200]}"
            finally:
                _free(grid.device)
            shown = "-" if row["seconds"] is None else f"{row['seconds'] * 1e3:.3f} ms"
            log(f"  {name:24s} B*H={bh} N={n} D={d} {dtype} "
                f"{'fwd+bwd' if backward else 'fwd'}: {shown}")
    return rows, skipped


def _free(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def plots(rows: list[dict], out: Path) -> list[str]:
    """One log-log plot of time against N per (B*H, D, dtype, pass); the file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    panels = sorted({(r["bh"], r["d"], r["dtype"], r["backward"]) for r in rows})
    for bh, d, dtype, backward in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["name"] for r in rows):
            points = [(r["n"], r["seconds"]) for r in rows if r["name"] == name
                      and (r["bh"], r["d"], r["dtype"], r["backward"]) == (bh, d, dtype, backward)
                      and r["seconds"] is not None]
            if points:
                ax.loglog(*zip(*points), marker="o", label=name)
        kind = "fwd+bwd" if backward else "fwd"
        ax.set(xlabel="N (tokens)", ylabel="seconds (min of repeats)",
               title=f"causal, B*H={bh}, D=Dv={d}, {dtype}, {kind}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = out / f"time-bh{bh}-d{d}-{dtype}-{kind.replace('+', '-')}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zeros-gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="folder for gpu-check.json, the conformance reports and the plots")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole check (default 480: 8 minutes)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: rehearse the harness on the CPU with small shapes")
    args = parser.parse_args(argv)
    start = time.monotonic()
    grid = GRID if args.device == "cuda" else REHEARSAL
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"grid": asdict(grid), "budget_s": args.budget,
                              "machine": zeros_machine.line(zeros_machine.describe()),
                              "cuda": _cuda()}
    print(report["machine"])
    if args.device == "cuda" and report["cuda"] is None:
        why = "no CUDA device (torch.cuda.is_available() is False or torch is missing)"
        print(f"{why}: skipping the conformance of {', '.join(grid.backends)} and the GPU "
              "benchmarks")
        report.update(skipped=why, conformance={}, bench=[], plots=[])
    else:
        print(report["cuda"] or "rehearsal on the CPU")
        share = 0.4 * args.budget / len(grid.backends)
        report["conformance"] = {}
        for name in grid.backends:
            print(f"conformance of {name} (quick profile, at most {share:.0f} s) ...")
            report["conformance"][name] = result = conformance(name, args.out, share, grid.only)
            print(f"  {result['status']} in {result['seconds']:.0f} s")
        report["settings"] = _settings(grid.backends)
        print("timings ...")
        deadline = start + args.budget - 20.0
        report["bench"], report["skipped_candidates"] = bench(grid, deadline, print)
        report["plots"] = plots(report["bench"], args.out)
    report["seconds"] = time.monotonic() - start
    path = args.out / "gpu-check.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path} in {report['seconds']:.0f} s")
    return 0


def _settings(names: Sequence[str]) -> dict[str, dict]:
    """The chunk length and chunks per slab each backend runs with (to tune them on a GPU)."""
    settings = {}
    for name in names:
        try:
            backend = registry.load(name)
        except Exception as error:  # reported again, with the timings
            settings[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        settings[name] = {"chunk_size": protocol.chunk_size(backend),
                          "slab_size": protocol.slab_size(backend)}
    return settings


def _cuda() -> str | None:
    """The GPU, torch's CUDA build and the driver, or None without a CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}); CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}")


if __name__ == "__main__":
    sys.exit(main())
