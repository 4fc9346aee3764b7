"""Measurements: timings, peak memory, the GEMM rate, the product ceiling, and one shape's row.

Every timing is the minimum over repeats (the machine's noise only ever adds time); medians
are kept too. Devices are synchronised through the backend's optional ``synchronize()`` after
each timed call; peak memory comes from its optional ``memory_peak(fn)``, or from tracemalloc
for NumPy arrays.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import array_api_compat
import numpy as np

import zeros_ref
from zeros_conformance import protocol
from zeros_machine import blas_threads, cpus

from . import dispatch
from .configs import Shape

__all__ = [
    "chunked_flops",
    "derive",
    "gemm_rate",
    "measure_decode",
    "measure_shape",
    "peak_memory",
    "product_rate",
    "timed",
    "timed_in_turn",
]


def timed(fn: Callable[[], Any], repeats: int, budget_s: float = 20.0) -> dict[str, float]:
    """Minimum and median seconds of ``fn()`` over up to `repeats` calls after a warm-up, and
    the seconds of the warm-up call itself (``first``: a backend that compiles per shape
    compiles there).

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
    return {"min": min(times), "median": statistics.median(times), "repeats": len(times),
            "first": first}


def timed_in_turn(fns: dict[str, Callable[[], Any]], repeats: int,
                  budget_s: float = 40.0) -> dict[str, dict[str, float]]:
    """`timed` of several calls taken in turn, one of each per round after a warm-up of
    each, so that a machine whose speed drifts during the run slows them alike and their
    ratios hold; rounds stop at `repeats` or once they have taken `budget_s` together."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    while len(times[next(iter(fns))]) < repeats and spent < budget_s:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
    return {name: {"min": min(t), "median": statistics.median(t), "repeats": len(t)}
            for name, t in times.items()}


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
                 slab_size: int = 8, repeats: int = 3) -> float:
    """FLOP/s of the chunked form's products alone at `shape` with chunk length `chunk`.

    Per chunk of every row: ``q k^T`` (C x D by D x C), the read and in-chunk term
    ``[P | Qf] [V ; S]`` (C x (C + 3D) by (C + 3D) x Dv) and the update ``Kf^T V`` (3D x C
    by C x Dv): `chunked_flops` exactly. Rows are split over `workers` threads (default: the
    CPUs), each issuing single-threaded BLAS calls batched over its rows and the `slab_size`
    chunks of a slab, on operands that stay in cache: an upper bound for any implementation of the
    form that multiplies chunk by chunk. Returns the best of `repeats`.
    """
    c, d, dv, dtype = chunk, shape.d, shape.dv, np.dtype(shape.dtype)
    workers = max(1, min(workers or cpus(), shape.bh))
    rows = -(-shape.bh // workers)  # rows of the busiest worker
    slabs = -(-shape.n // (c * slab_size))
    rng = np.random.default_rng(0)

    def operands(*dims: int) -> np.ndarray:
        return rng.standard_normal((rows, slab_size, *dims)).astype(dtype)

    pairs = [(operands(c, d), operands(d, c)), (operands(c, c + 3 * d), operands(c + 3 * d, dv)),
             (operands(3 * d, c), operands(c, dv))]
    outs = [np.empty((rows, slab_size, a.shape[-2], b.shape[-1]), dtype) for a, b in pairs]

    def worker() -> None:
        for _ in range(slabs):
            for (a, b), out in zip(pairs, outs):
                np.matmul(a, b, out=out)

    with ThreadPoolExecutor(workers) as pool, (
            blas_threads(1) if workers > 1 else contextlib.nullcontext()):

        def run() -> None:  # the pool's threads are started once, outside the timings
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()

        seconds = timed(run if workers > 1 else worker, repeats)["min"]
    flops = chunked_flops(Shape(rows * workers, slabs * slab_size * c, d, dv), c)
    return flops / seconds


def _inputs(shape: Shape, seed: int = 0) -> tuple[np.ndarray, ...]:
    """q, k (bh, N, D), v (bh, N, Dv) and logits (bh, N) of the shape's dtype."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((shape.bh, shape.n, shape.d))
    k = rng.standard_normal((shape.bh, shape.n, shape.d))
    v = rng.standard_normal((shape.bh, shape.n, shape.dv))
    s = rng.standard_normal((shape.bh, shape.n))
    return tuple(x.astype(shape.dtype) for x in (q, k, v, s))


@contextlib.contextmanager
def _one_worker(backend: protocol.Threaded) -> Iterator[None]:
    """The backend limited to one worker thread (its `workers` attribute) for a while."""
    workers = backend.workers
    backend.workers = 1
    try:
        yield
    finally:
        backend.workers = workers


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
    sync = protocol.synchronize(backend)

    def run() -> Any:
        out = backend.attention(bq, bk, bv, logits=bs, causal=shape.causal, **backend_gates)
        sync()
        return out

    row = {**asdict(shape)}
    row["backend"] = timed(run, repeats)
    if protocol.is_threaded(backend) and backend.workers != 1 and cpus() > 1:
        with _one_worker(backend):
            row["backend_one_worker"] = timed(run, repeats)
    with blas_threads(1):
        row["reference"] = timed(lambda: zeros_ref.attention(q, k, v, logits=s,
                                                             causal=shape.causal, **gates),
                                 repeats)
    row["softmax"] = timed(softmax(q, k, v, shape.causal), repeats, budget_s=10.0)
    memory = protocol.memory_peak(backend)
    if memory is not None:
        row["peak_bytes"] = int(memory(run))
    elif isinstance(bq, np.ndarray):  # tracemalloc sees NumPy's allocations only
        row["peak_bytes"] = peak_memory(run)
    row["input_bytes"] = int(sum(x.nbytes for x in (q, k, v, s)))
    if array_api_compat.is_torch_array(bq):  # the launches and host syncs a GPU would pay
        row["dispatch"] = dispatch.count(run)
        if "grad" in protocol.features(backend) and shape.n <= TRAIN_MAX_N:
            row["train_peak_bytes"] = _training_peak(backend, (bq, bk, bv, bs), backend_gates,
                                                     shape.causal)
            output_bytes = shape.bh * shape.n * shape.dv * np.dtype(shape.dtype).itemsize
            row["train_call_bytes"] = int(row["input_bytes"] + output_bytes)
    row["flops"] = chunked_flops(shape, protocol.chunk_size(backend))
    if protocol.device(backend) == "cpu":
        row["product_flops"] = product_rate(shape, protocol.chunk_size(backend),
                                            workers=protocol.workers(backend),
                                            slab_size=protocol.slab_size(backend) or 8)
    return row


TRAIN_MAX_N = 16384
"""Longest sequence whose forward + backward peak is measured (it takes a backward pass)."""


def _training_peak(backend: Any, arrays: tuple, gates: dict[str, Any], causal: bool) -> int:
    """Peak bytes allocated by one forward + backward call of a torch backend, beyond its
    inputs (`dispatch.peak_allocated`), gradients for q, k, v and the logits included."""
    leaves = [x.detach().clone().requires_grad_(True) for x in arrays]

    def step() -> None:
        out = backend.attention(*leaves[:3], logits=leaves[3], causal=causal, **gates)
        out.sum().backward()

    step()  # warm up, then measure the steady state
    for x in leaves:
        x.grad = None
    return dispatch.peak_allocated(step)


def measure_decode(backend: Any, shape: Shape, contexts: Sequence[int], repeats: int) -> dict:
    """Seconds of one one-token call with the state of a prefix of each context length."""
    result = {}
    sync = protocol.synchronize(backend)
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
