"""Context parallelism on CPU (spec 5.3): one sequence split over 2 and 4 spawned processes
of a gloo group on the loopback device, each rank's outputs, the final state and the
gradients equal to one call on the whole (`cp_worker`), and the bytes a rank sends the same
at slices of 16,384 and 131,072 tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra `torch`)")
mp = pytest.importorskip("torch.multiprocessing")

import cp_worker  # noqa: E402 (after the skip: it imports torch)

DEADLINE = 120.0
"""Seconds a group may take before its processes are killed and the test fails."""


def _spawn(ranks: int, tmp_path: Path, lengths: tuple[int, ...]) -> None:
    """Run `cp_worker.main` on `ranks` processes; fail on any error or past `DEADLINE`."""
    init = tmp_path / "init"
    context = mp.spawn(cp_worker.main, args=(ranks, str(init), 7, lengths), nprocs=ranks,
                       join=False)
    end = time.monotonic() + DEADLINE
    while not context.join(timeout=1.0):
        if time.monotonic() > end:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{ranks} ranks did not finish in {DEADLINE:.0f} s")


@pytest.mark.req("ZS-STREAM-MERGE")
@pytest.mark.parametrize("ranks", [2, 4])
def test_split_sequence_equals_one_call(ranks: int, tmp_path: Path) -> None:
    _spawn(ranks, tmp_path, (16384, 131072))
