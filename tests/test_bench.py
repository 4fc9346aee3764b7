"""`zeros-bench` (zeros_bench): the correctness gate, the derived fields, the product ceiling,
the softmax baseline and the packed batch of ``--varlen``; `zeros_machine`, which it shares with
the backends and the suite."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import zeros_bench as bench
import zeros_machine
from zeros_backends.numpy_backend import NumpyBackend, backend


class _Skewed(NumpyBackend):
    """A backend one part in a million off: the gate must refuse it."""

    def attention(self, *args: object, **kwargs: object) -> object:
        result = super().attention(*args, **kwargs)
        if isinstance(result, tuple):
            return result[0] * (1 + 1e-6), result[1]
        return result * (1 + 1e-6)


def test_gate_passes_the_backend_and_rejects_a_broken_one() -> None:
    assert bench.correctness_gate(backend, "numpy") == []
    failures = bench.correctness_gate(_Skewed())
    assert failures and any(f.startswith("ZS-ACC-REFERENCE failed") for f in failures), failures


def test_bench_refuses_to_time_a_broken_backend(tmp_path: Path, capsys) -> None:
    module = tmp_path / "skewed.py"
    module.write_text(
        "from zeros_backends.numpy_backend import NumpyBackend\n"
        "class Skewed(NumpyBackend):\n"
        "    def attention(self, *a, **k):\n"
        "        out = super().attention(*a, **k)\n"
        "        return (out[0] + 1e-3, out[1]) if isinstance(out, tuple) else out + 1e-3\n"
        "backend = Skewed()\n"
    )
    assert bench.main(["--backend", f"{module}:backend", "--quick", "--softmax", "numpy"]) == 1
    assert "fails the quick conformance run" in capsys.readouterr().err


def test_bench_quick_run_writes_the_derived_fields(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench.main(["--quick", "--softmax", "numpy", "--json", str(out),
                       "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["gate"] == "passed" and report["gemm_flops"] > 0
    assert report["machine"]["blas"] and report["machine"]["cpus"] >= 1
    assert report["machine"]["backend"] == "numpy"
    small, large = report["configs"]["quick"]
    assert large["n"] == 8 * small["n"]
    for row in (small, large):
        several = zeros_machine.cpus() > 1  # then the backend is also timed on one worker
        for key in ("flop_rate", "gemm_share", "product_flops", "product_share", "vs_softmax",
                    "reference_vs_backend", *["reference_vs_one_worker"] * several):
            assert np.isfinite(row[key]) and row[key] > 0, key
        for timing in ("backend", "reference", "softmax", *["backend_one_worker"] * several):
            assert 0 < row[timing]["min"] <= row[timing]["median"]
    assert backend.workers is None  # the one-worker timing gave the setting back
    assert small["time_8n_ratio"] > 0 and small["memory_8n_ratio"] > 0
    assert report["decode"]["ratio"] > 0 and len(report["decode"]["times"]) == 2
    assert png.stat().st_size > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_product_rate_counts_the_chunked_form(monkeypatch, workers) -> None:
    """The ceiling times exactly the products `chunked_flops` counts: one matmul call per
    product kind and slab on each worker, with the shapes of the chunked form."""
    shapes, real = [], np.matmul

    def spy(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        shapes.append((a.shape, b.shape))
        return real(a, b, out=out)

    monkeypatch.setattr(np, "matmul", spy)
    shape, c = bench.Shape(bh=4, n=96, d=8, dv=5), 16  # 96 tokens: one slab of 8 chunks
    assert bench.product_rate(shape, c, workers=workers, slab_size=8, repeats=1) > 0
    calls = shapes[: 3 * workers]  # the first timed call (repeats add more)
    rows = 4 // workers
    flops = sum(2 * np.prod(a) * b[-1] for a, b in calls)
    assert {a[:2] for a, _ in calls} == {(rows, 8)}
    assert flops == bench.chunked_flops(bench.Shape(4, 8 * c, 8, 5), c)


def test_blocked_softmax_is_causal_softmax(rng) -> None:
    q, k, v = rng.normal(size=(3, 2, 70, 4))
    scores = q @ k.swapaxes(-1, -2) / 2.0
    scores = np.where(np.tri(70, dtype=bool), scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    expected = (p / p.sum(axis=-1, keepdims=True)) @ v
    np.testing.assert_allclose(bench.blocked_softmax(q, k, v, block=16), expected, rtol=1e-12)


def test_machine_is_described_once_for_every_report() -> None:
    info = zeros_machine.describe()
    assert info["cpus"] == zeros_machine.cpus() >= 1
    line = zeros_machine.line(info)
    assert info["processor"] in line and f"numpy {np.__version__}" in line
    assert bench.machine(backend)["cpus"] == info["cpus"]


def test_blas_threads_limits_and_restores() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the bench extra")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()
              if p["user_api"] == "blas"]
    with zeros_machine.blas_threads(1):
        inside = [p["num_threads"] for p in threadpoolctl.threadpool_info()
                  if p["user_api"] == "blas"]
    after = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert inside and set(inside) == {1}
    assert after == before


def test_dispatch_counts_operations_and_syncs() -> None:
    torch = pytest.importorskip("torch", reason="counts torch dispatches")
    from zeros_bench import dispatch

    x = torch.ones(4)
    assert dispatch.count(lambda: (x + 1) * 2) == {"ops": 2, "syncs": 0}
    assert dispatch.count(lambda: float((x * 3).sum())) == {"ops": 3, "syncs": 1}


def test_shapes_of_ones_own(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--backend", "reference", "--shape", "2,96,8", "--shape", "3,64,8,4",
                       "--dtype", "float64", "--gates", "random", "--bidirectional",
                       "--softmax", "numpy", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["configs"]["custom"]
    assert [(r["bh"], r["n"], r["d"], r["dv"]) for r in rows] == [(2, 96, 8, 8), (3, 64, 8, 4)]
    assert all((r["dtype"], r["gates"], r["causal"]) == ("float64", "random", False)
               for r in rows)
    assert report["decode"] is None  # a decode step needs causal attention


@pytest.mark.parametrize("text", ["2,96", "2,96,8,4,1", "2,x,8", "0,96,8"])
def test_a_bad_shape_is_refused(text: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--shape", text])
    assert stop.value.code == 2 and "--shape" in capsys.readouterr().err


def test_blocked_softmax_bidirectional(rng) -> None:
    q, k, v = rng.normal(size=(3, 2, 70, 4))
    scores = q @ k.swapaxes(-1, -2) / 2.0
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    expected = (p / p.sum(axis=-1, keepdims=True)) @ v
    np.testing.assert_allclose(bench.blocked_softmax(q, k, v, block=16, causal=False), expected,
                               rtol=1e-12)


def test_versus_alternates_backends_and_prints_ratios(capsys) -> None:
    """`python -m zeros_bench.versus`: every backend is timed in every round, and the printed
    ratios are to the last backend named."""
    from zeros_bench import versus

    times = versus.compare(["reference", "numpy"], [64, 128], [2, 3], bh=2, d=8)
    assert {n: {name: len(t) for name, t in by.items()} for n, by in times.items()} == {
        64: {"reference": 2, "numpy": 2}, 128: {"reference": 3, "numpy": 3}}
    assert versus.main(["reference", "numpy", "--n", "64", "128", "--repeats", "2",
                        "--bh", "2", "--d", "8"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "x1.00 (1.00)" in out and "time(128)/time(64): reference" in out
    assert "first call (compilation included, where a backend compiles): N=64 reference" in out


def test_dispatches_are_counted_for_torch_arrays_only() -> None:
    """A row counts dispatched operations and the training peak where the backend's arrays are
    torch tensors (`array_api_compat.is_torch_array`), whatever module the backend is in."""
    pytest.importorskip("torch", reason="counts torch dispatches")
    from zeros_backends.torch_backend import backend as torch_backend

    shape = bench.Shape(2, 128, 16, 16)
    _, make = bench.softmax("numpy")
    row = bench.measure_shape(torch_backend, shape, make, repeats=1)
    assert row["dispatch"]["ops"] > 0 and row["train_peak_bytes"] > 0
    assert "dispatch" not in bench.measure_shape(backend, shape, make, repeats=1)


TINY = bench.Packed(bh=2, t=300, max_len=40, d=8, dv=4, dtype="float64", repeats=1)
"""A packed batch small enough for a test: 300 tokens in sequences of 1 to 40."""


def test_packed_lengths_are_seeded_and_fill_the_batch() -> None:
    lengths = TINY.lengths()
    assert sum(lengths) == TINY.t and min(lengths) >= 1 and max(lengths) <= TINY.max_len
    assert lengths == TINY.lengths() and lengths != replace(TINY, seed=1).lengths()


def test_varlen_run_reports_packed_dense_and_padded(tmp_path: Path, monkeypatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """``zeros-bench --backend reference --varlen --quick`` with the quick batch made tiny:
    the three calls are timed and the ratios to the dense call are positive and finite."""
    monkeypatch.setitem(bench.PACKED, "quick", TINY)
    out = tmp_path / "bench.json"
    assert bench.main(["--backend", "reference", "--quick", "--varlen", "--softmax", "numpy",
                       "--repeats", "1", "--json", str(out)]) == 0
    varlen = json.loads(out.read_text())["varlen"]
    lengths = TINY.lengths()
    assert varlen["skipped"] is None and varlen["padded_skipped"] is None
    assert (varlen["t"], varlen["bh"], varlen["d"], varlen["dv"]) == (300, 2, 8, 4)
    assert varlen["sequences"] == len(lengths) and varlen["longest"] == max(lengths)
    assert varlen["padded_tokens"] == len(lengths) * max(lengths) > varlen["tokens"] == 300
    for call in ("packed", "dense", "padded"):
        assert 0 < varlen[call]["min"] <= varlen[call]["median"], call
    for ratio in ("packed_vs_dense", "padded_vs_dense"):
        assert np.isfinite(varlen[ratio]) and varlen[ratio] > 0, ratio
    printed = capsys.readouterr().out
    assert "packed, with cu_seqlens" in printed and "padded to the longest" in printed


def test_varlen_padding_over_the_budget_is_skipped_with_its_tokens() -> None:
    from zeros_backends.reference import backend as reference

    result = bench.measure_varlen(reference, replace(TINY, budget_bytes=1000, causal=False),
                                  log=lambda _: None)
    assert result["padded"] is None and result["padded_vs_dense"] is None
    assert "over the budget" in result["padded_skipped"]
    assert result["padded_bytes"] == bench.padded_bytes(TINY, TINY.lengths()) > 1000
    assert result["padded_tokens"] > result["tokens"] and result["packed_vs_dense"] > 0
    lines = bench.varlen_lines(result)
    assert any(line.startswith("padded call not timed: its inputs") for line in lines)


class _Dense(NumpyBackend):
    """The NumPy backend without packed calls."""

    features = NumpyBackend.features - {"varlen"}


def test_varlen_is_not_timed_for_a_backend_that_does_not_claim_it() -> None:
    dense = _Dense()
    result = bench.measure_varlen(dense, TINY, log=lambda _: None)
    assert result == {"skipped": bench.varlen.not_claimed(dense)}
    assert "does not claim the feature \"varlen\"" in bench.varlen_lines(result)[0]
