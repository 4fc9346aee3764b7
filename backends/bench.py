"""``zeros-bench``: time a ZeroS backend against the reference and softmax attention.

For every shape of the chosen configuration it times, in one run, the backend, the reference
`zeros_ref.attention` on NumPy, and causal softmax attention (PyTorch's
``scaled_dot_product_attention`` on CPU when torch imports, else `blocked_softmax`), plus a
one-token decode step with a carried state at a short and a long context, and the float32
GEMM rate of the machine (a large NumPy matmul). From these it derives

- the backend's achieved FLOP/s on the chunked form's count, ``B*H * N * (12 D Dv +
  2 C (D + Dv))`` (the state read and update, 3D x Dv each way, plus the C x C products), and
  its share of the GEMM rate;
- on CPU backends, its share of the *product ceiling*: the FLOP/s of the chunked form's
  products alone (`product_rate`), timed at the form's own small shapes on all CPUs. No
  implementation that issues one BLAS product per chunk can beat it; the gap between the
  ceiling and the GEMM rate is the BLAS's, the gap below the ceiling is the backend's;
- the time ratios backend / softmax and reference / backend, and, for a backend with worker
  threads (a ``workers`` attribute) on a machine with several CPUs, reference / backend on
  one worker: the reference runs on one thread, so this ratio compares like with like;
- the scaling ratios time(8N) / time(N) and peak memory(8N) / peak memory(N) (spec ZS-ON-TIME,
  ZS-ON-MEMORY; a linear method gives about 8, a quadratic one about 64);
- the decode ratio time(long context) / time(short context) (ZS-ON-DECODE).

Before timing, `correctness_gate` runs the quick conformance profile; a backend that fails a
MUST requirement gets no timings (exit status 1). Devices are synchronised through the
backend's optional ``synchronize()`` after each timed call; peak memory comes from its
optional ``memory_peak(fn)``, or from tracemalloc for NumPy arrays. Every timing is the
minimum over repeats (the machine's noise only ever adds time); medians are kept in the JSON.

Usage: ``zeros-bench [--backend numpy] [--config NAME] [--quick] [--json out.json]
[--plot out.png]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import zeros_ref
from zeros_backends._machine import cpus

__all__ = [
    "CONFIGS",
    "Shape",
    "blocked_softmax",
    "chunked_flops",
    "correctness_gate",
    "gemm_rate",
    "main",
    "product_rate",
]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: bh = B*H rows, n tokens, d = D, dv = Dv, dtype name, and the gates:
    "default" (first = higher, where the first-order term vanishes) or "random" (per-step
    gates, all three unequal: the general case)."""

    bh: int
    n: int
    d: int = 64
    dv: int = 64
    dtype: str = "float32"
    gates: str = "default"


@dataclass(frozen=True)
class Config:
    """A named set of shapes timed together, and the decode contexts to time."""

    shapes: tuple[Shape, ...]
    decode: tuple[int, int] = (1024, 65536)
    repeats: int = 5


SWEEP = tuple(Shape(8, 512 * 2**i) for i in range(8))  # N = 512 ... 65536
CONFIGS: dict[str, Config] = {
    "bh8-n8192-d64": Config((Shape(8, 8192), Shape(8, 65536))),
    "bh8-n8192-d64-gates": Config((Shape(8, 8192, gates="random"),)),
    "sweep-bh8-d64": Config(SWEEP),
    "quick": Config((Shape(2, 128, 16, 16), Shape(2, 1024, 16, 16)), (128, 1024), repeats=2),
}
"""Named configurations. ``bh8-n8192-d64`` holds N = 8192 and its 8N for the scaling ratios;
``quick`` is a tiny run for tests (``--quick``)."""

DEFAULT_CONFIGS = ("bh8-n8192-d64", "bh8-n8192-d64-gates", "sweep-bh8-d64")


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int, budget_s: float = 20.0) -> dict[str, float]:
    """Minimum and median seconds of ``fn()`` over up to `repeats` calls after a warm-up.

    A call longer than `budget_s` is not warmed up or repeated; repeats stop once the calls
    have taken `budget_s` together.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = [first] if first > budget_s else []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return {"min": min(times), "median": statistics.median(times), "repeats": len(times)}


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated while ``fn()`` runs, less the bytes of what it returns.

    tracemalloc sees NumPy's allocations; inputs made before the call are not counted, the
    returned output (or output and state) is subtracted.
    """
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    held = result if isinstance(result, tuple) else (result,)
    return max(0, peak - sum(int(getattr(x, "nbytes", 0)) for x in held))


def gemm_rate(size: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """float32 FLOP/s of one large matmul (``2 size^3`` flops), best of `repeats`: NumPy on
    the CPU, torch on a CUDA device."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    if not device.startswith("cuda"):
        return 2.0 * size**3 / timed(lambda: a @ b, repeats)["min"]
    import torch

    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

    def product() -> Any:
        out = ta @ tb
        torch.cuda.synchronize()
        return out

    return 2.0 * size**3 / timed(product, repeats)["min"]


def chunked_flops(shape: Shape, chunk: int) -> float:
    """Flops of the chunked form: ``B*H * N * (12 D Dv + 2 C (D + Dv))``."""
    per_token = 12 * shape.d * shape.dv + 2 * chunk * (shape.d + shape.dv)
    return float(shape.bh * shape.n * per_token)


def product_rate(shape: Shape, chunk: int, *, workers: int | None = None,
                 block_chunks: int = 8, repeats: int = 3) -> float:
    """FLOP/s of the chunked form's products alone at `shape` with chunk length `chunk`.

    Per chunk of every row: ``q k^T`` (C x D by D x C), the read and in-chunk term
    ``[P | Qf] [V ; S]`` (C x (C + 3D) by (C + 3D) x Dv) and the update ``Kf^T V`` (3D x C
    by C x Dv): `chunked_flops` exactly. Rows are split over `workers` threads (default: the
    CPUs), each issuing single-threaded BLAS calls batched over its rows and `block_chunks`
    chunks, on operands that stay in cache: an upper bound for any implementation of the
    form that multiplies chunk by chunk. Returns the best of `repeats`.
    """
    c, d, dv, dtype = chunk, shape.d, shape.dv, np.dtype(shape.dtype)
    workers = max(1, min(workers or cpus(), shape.bh))
    rows = -(-shape.bh // workers)  # rows of the busiest worker
    blocks = -(-shape.n // (c * block_chunks))
    rng = np.random.default_rng(0)

    def operands(*dims: int) -> np.ndarray:
        return rng.standard_normal((rows, block_chunks, *dims)).astype(dtype)

    pairs = [(operands(c, d), operands(d, c)), (operands(c, c + 3 * d), operands(c + 3 * d, dv)),
             (operands(3 * d, c), operands(c, dv))]
    outs = [np.empty((rows, block_chunks, a.shape[-2], b.shape[-1]), dtype) for a, b in pairs]

    def worker() -> None:
        for _ in range(blocks):
            for (a, b), out in zip(pairs, outs):
                np.matmul(a, b, out=out)

    with ThreadPoolExecutor(workers) as pool, (
            _blas_threads(1) if workers > 1 else contextlib.nullcontext()):

        def run() -> None:  # the pool's threads are started once, outside the timings
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()

        seconds = timed(run if workers > 1 else worker, repeats)["min"]
    flops = chunked_flops(Shape(rows * workers, blocks * block_chunks * c, d, dv), c)
    return flops / seconds


def blocked_softmax(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int = 512) -> np.ndarray:
    """Causal softmax attention ``softmax(q k^T / sqrt(D) + mask) v``, block of queries at a time.

    Shapes: q, k (b, N, D); v (b, N, Dv) -> (b, N, Dv). Memory O(b * block * N).
    """
    n, d = q.shape[-2], q.shape[-1]
    out = np.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    for p0 in range(0, n, block):
        p1 = min(p0 + block, n)
        scores = q[:, p0:p1] @ k[:, :p1].swapaxes(-1, -2) / math.sqrt(d)  # (b, block, p1)
        rows, cols = np.arange(p0, p1)[:, None], np.arange(p1)[None, :]
        scores = np.where(cols <= rows, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, p0:p1] = (scores @ v[:, :p1]) / scores.sum(axis=-1, keepdims=True)
    return out


def _softmax(kind: str, device: str = "cpu") -> tuple[str, Callable[..., Callable[[], Any]]]:
    """(name, make) of causal softmax attention: ``make(q, k, v)`` takes numpy inputs and
    returns a call to time, torch SDPA on `device` (FlashAttention on a GPU) or
    `blocked_softmax`."""
    if kind in ("auto", "torch"):
        try:
            import torch
        except ImportError:
            if kind == "torch":
                raise
        else:
            sdpa = torch.nn.functional.scaled_dot_product_attention

            def make(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Callable[[], Any]:
                # (1, B*H, N, D): with 4-D inputs torch's CPU SDPA takes its flash kernel.
                args = [torch.from_numpy(x)[None].to(device) for x in (q, k, v)]

                def run() -> Any:
                    with torch.no_grad():
                        out = sdpa(*args, is_causal=True)
                    if out.is_cuda:
                        torch.cuda.synchronize()
                    return out

                return run

            threads = "GPU" if device.startswith("cuda") else f"{torch.get_num_threads()} threads"
            return f"torch {torch.__version__} sdpa on {device} ({threads})", make
    return "numpy blocked_softmax", lambda q, k, v: lambda: blocked_softmax(q, k, v)


def _synchronize(backend: Any) -> Callable[[], None]:
    """The backend's optional ``synchronize`` (waits for queued device work), else a no-op."""
    return getattr(backend, "synchronize", None) or (lambda: None)


# ---------------------------------------------------------------------------------------------
# The correctness gate
# ---------------------------------------------------------------------------------------------


def correctness_gate(backend: Any, target: str = "") -> list[str]:
    """Failures of `backend` in the quick conformance run: one explanation per failed MUST
    requirement of the claimed features (empty when it conforms).

    `target` is how the backend was named (registered name, module:attr or file.py:attr); the
    memory check needs it to load the backend in a subprocess.
    """
    from zeros_conformance._guard import Limits
    from zeros_conformance._harness import Context
    from zeros_conformance.session import run as conformance_run
    from zeros_conformance.status import NOT_CONFORMING

    outcomes = conformance_run(Context(backend, target=target, profile="quick"), limits=Limits())
    return [o.explain() for o in outcomes if o.required and o.status in NOT_CONFORMING]


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _inputs(shape: Shape, seed: int = 0) -> tuple[np.ndarray, ...]:
    """q, k (bh, N, D), v (bh, N, Dv) and logits (bh, N) of the shape's dtype."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((shape.bh, shape.n, shape.d))
    k = rng.standard_normal((shape.bh, shape.n, shape.d))
    v = rng.standard_normal((shape.bh, shape.n, shape.dv))
    s = rng.standard_normal((shape.bh, shape.n))
    return tuple(x.astype(shape.dtype) for x in (q, k, v, s))


def _blas_threads(limit: int) -> contextlib.AbstractContextManager:
    """BLAS limited to `limit` threads (threadpoolctl), or nothing if it is not installed.

    The reference issues small products (one chunk of all rows at a time); a multi-threaded
    BLAS can spend more time waking its threads than computing them (on a 2-CPU VM the
    reference ran 3-10x slower with two OpenBLAS threads than with one), so it is timed with
    one BLAS thread, the policy the NumPy backend applies to its own products.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


@contextlib.contextmanager
def _one_worker(backend: Any) -> Iterator[None]:
    """The backend limited to one worker thread (its `workers` attribute) for a while."""
    workers = backend.workers
    backend.workers = 1
    try:
        yield
    finally:
        backend.workers = workers


def _chunk_size(backend: Any) -> int:
    return int(getattr(backend, "chunk_size", zeros_ref.DEFAULT_CHUNK_SIZE))


def measure_shape(backend: Any, shape: Shape, softmax: Callable, repeats: int) -> dict:
    """Times (s), peak memory (bytes) and flop count of one shape."""
    q, k, v, s = _inputs(shape)
    bq, bk, bv, bs = (backend.from_numpy(x, shape.dtype) for x in (q, k, v, s))
    gates: dict[str, Any] = {}
    if shape.gates == "random":
        rng = np.random.default_rng(1)
        gates = {g: rng.uniform(-1.0, 2.0, (shape.bh, shape.n)).astype(shape.dtype)
                 for g in ("first", "higher", "zero")}
    backend_gates = {g: backend.from_numpy(x, shape.dtype) for g, x in gates.items()}
    sync = _synchronize(backend)

    def run() -> Any:
        out = backend.attention(bq, bk, bv, logits=bs, **backend_gates)
        sync()
        return out

    row = {**asdict(shape)}
    row["backend"] = timed(run, repeats)
    if getattr(backend, "workers", 1) != 1 and cpus() > 1:
        with _one_worker(backend):
            row["backend_one_worker"] = timed(run, repeats)
    with _blas_threads(1):
        row["reference"] = timed(lambda: zeros_ref.attention(q, k, v, logits=s, **gates),
                                 repeats)
    row["softmax"] = timed(softmax(q, k, v), repeats, budget_s=10.0)
    memory = getattr(backend, "memory_peak", None)
    if callable(memory):
        row["peak_bytes"] = int(memory(run))
    elif isinstance(bq, np.ndarray):  # tracemalloc sees NumPy's allocations only
        row["peak_bytes"] = peak_memory(run)
    row["input_bytes"] = int(sum(x.nbytes for x in (q, k, v, s)))
    row["flops"] = chunked_flops(shape, _chunk_size(backend))
    if str(getattr(backend, "device", "cpu")) == "cpu":
        row["product_flops"] = product_rate(shape, _chunk_size(backend),
                                            workers=getattr(backend, "workers", None))
    return row


def measure_decode(backend: Any, shape: Shape, contexts: Sequence[int], repeats: int) -> dict:
    """Seconds of one one-token call with the state of a prefix of each context length."""
    result = {}
    sync = _synchronize(backend)
    for context in contexts:
        q, k, v, s = _inputs(Shape(shape.bh, context + 1, shape.d, shape.dv, shape.dtype), 1)
        b = [backend.from_numpy(x, shape.dtype) for x in (q, k, v, s)]
        _, state = backend.attention(b[0][:, :context], b[1][:, :context], b[2][:, :context],
                                     logits=b[3][:, :context], return_state=True)
        step = [x[:, context:] for x in b]

        def one(step: list = step, state: Any = state) -> Any:
            out = backend.attention(*step[:3], logits=step[3], state=state)
            sync()
            return out

        result[str(context)] = timed(one, max(50, 10 * repeats), budget_s=2.0)
    return result


def derive(rows: list[dict], gemm: float) -> None:
    """Add rates, ratios and scaling ratios to the rows of one configuration (in place)."""
    by_n = {row["n"]: row for row in rows}
    for row in rows:
        t = row["backend"]["min"]
        row["flop_rate"] = row["flops"] / t
        row["gemm_share"] = row["flop_rate"] / gemm
        if "product_flops" in row:
            row["product_share"] = row["flop_rate"] / row["product_flops"]
        row["vs_softmax"] = t / row["softmax"]["min"]
        row["reference_vs_backend"] = row["reference"]["min"] / t
        if "backend_one_worker" in row:
            row["reference_vs_one_worker"] = (row["reference"]["min"]
                                              / row["backend_one_worker"]["min"])
        big = by_n.get(8 * row["n"])
        if big is not None:
            row["time_8n_ratio"] = big["backend"]["min"] / t
            if "peak_bytes" in row:
                row["memory_8n_ratio"] = big["peak_bytes"] / max(row["peak_bytes"], 1)


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(backend: Any) -> dict:
    """Processor, thread counts and the BLAS in use (threadpoolctl)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _processor(),
        "cpus": cpus(),
        "numpy": np.__version__,
        "backend": getattr(backend, "name", type(backend).__name__),
        "backend_workers": getattr(backend, "workers", None) or "auto",
        "openblas_env": {key: os.environ[key] for key in ("OPENBLAS_CORETYPE",
                         "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS") if key in os.environ},
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


def _machine_line(info: dict) -> str:
    blas = info["blas"]
    if isinstance(blas, list):
        blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, "
                         f"{b['num_threads']} threads)" for b in blas) or "none found"
    env = " ".join(f"{k}={v}" for k, v in info["openblas_env"].items()) or "no BLAS env"
    return (f"machine: {info['processor']}, {info['cpus']} CPUs; BLAS: {blas}; {env}; numpy "
            f"{info['numpy']}; backend {info['backend']} workers={info['backend_workers']}")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def table(report: dict) -> str:
    """The terminal table of a report."""
    lines = [_machine_line(report["machine"]),
             f"float32 GEMM rate: {report['gemm_flops'] / 1e9:.1f} GFLOP/s; softmax: "
             f"{report['softmax']}"]
    head = (f"{'config':<19} {'N':>6} {report['backend']:>9} {'zeros_ref':>9} {'softmax':>9} "
            f"{'GFLOP/s':>8} {'%GEMM':>6} {'%prod':>6} {'/soft':>7} {'ref/be':>6} "
            f"{'ref/1w':>6} {'t8N/N':>6} {'peakMB':>8} {'m8N/N':>6}")
    lines += ["times in ms (min over repeats); GFLOP/s on the chunked form's count; %prod: "
              "share of the form's products timed alone; zeros_ref timed with 1 BLAS thread; "
              "ref/1w: against the backend on one worker thread",
              head]
    for name, rows in report["configs"].items():
        for row in rows:
            def opt(key: str, row: dict = row) -> str:
                return f"{row[key]:6.2f}" if key in row else f"{'-':>6}"

            def percent(key: str, row: dict = row) -> str:
                return f"{100 * row[key]:5.1f}%" if key in row else f"{'-':>6}"

            lines.append(
                f"{name:<19} {row['n']:>6} {row['backend']['min'] * 1e3:9.2f} "
                f"{row['reference']['min'] * 1e3:9.2f} {row['softmax']['min'] * 1e3:9.1f} "
                f"{row['flop_rate'] / 1e9:8.1f} {100 * row['gemm_share']:5.1f}% "
                f"{percent('product_share')} "
                f"{row['vs_softmax']:7.4f} {row['reference_vs_backend']:6.2f} "
                f"{opt('reference_vs_one_worker')} {opt('time_8n_ratio')} "
                f"{row['peak_bytes'] / 2**20 if 'peak_bytes' in row else float('nan'):8.2f} "
                f"{opt('memory_8n_ratio')}")
    decode = report["decode"]
    steps = ", ".join(f"{c} tokens {t['min'] * 1e6:.0f} us" for c, t in decode["times"].items())
    lines.append(f"decode step (bh={decode['bh']}, one token with state): {steps}; "
                 f"long/short {decode['ratio']:.3f}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Log-log time vs N of the backend, the reference and softmax, with slopes 1 and 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for rows in report["configs"].values() for r in rows]
    rows = sorted({r["n"]: r for r in rows}.values(), key=lambda r: r["n"])
    ns = np.array([r["n"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, label in (("backend", f"ZeroS {report['backend']}"), ("reference", "zeros_ref"),
                       ("softmax", "softmax (" + report["softmax"].split(" (")[0] + ")")):
        ax.loglog(ns, [r[key]["min"] for r in rows], "o-", label=label)
    anchor = rows[0]["backend"]["min"]
    for slope, color in ((1, "gray"), (2, "black")):
        ax.loglog(ns, anchor * (ns / ns[0]) ** slope, "--", color=color, linewidth=1,
                  label=f"ideal slope {slope}")
    ax.set_xlabel("N (tokens)")
    ax.set_ylabel("time (s), min over repeats")
    ax.set_title(f"causal attention, B*H={rows[0]['bh']}, D=Dv={rows[0]['d']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _load_backend(spec: str) -> Any:
    from zeros_conformance.registry import load

    return load(spec)


def run(backend: Any, names: Sequence[str], *, softmax_kind: str = "auto",
        repeats: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure the configurations `names`; returns the report (see `main`)."""
    device = str(getattr(backend, "device", "cpu"))
    softmax_name, softmax = _softmax(softmax_kind, device)
    report: dict[str, Any] = {"backend": getattr(backend, "name", "backend"),
                              "machine": machine(backend), "softmax": softmax_name,
                              "chunk_size": _chunk_size(backend), "configs": {}}
    log(_machine_line(report["machine"]))
    report["gemm_flops"] = gemm_rate(1024 if "quick" in names else 4096, device=device)
    measured: dict[Shape, dict] = {}  # a shape in two configurations is timed once
    for name in names:
        config = CONFIGS[name]
        for shape in config.shapes:
            if shape not in measured:
                log(f"  {name}: B*H={shape.bh} N={shape.n} D={shape.d} {shape.dtype} ...")
                measured[shape] = measure_shape(backend, shape, softmax,
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
        backend = _load_backend(args.backend)
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
    report["gate"] = "passed"
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
