"""A backend cannot take the suite down: growing checks run guarded or blocked, and the
report survives a crash (spec 10.3)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zeros_conformance import BLOCKERS, cli, grows, load_requirements
from zeros_conformance.checks.complexity import state_bytes

BROKEN = Path(__file__).parent / "backends" / "broken.py"


def run(tmp_path: Path, mutant: str, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    code = cli.main(["run", "--backend", f"{BROKEN}:{mutant}", "--quick", "--report",
                     str(report), *extra])
    return code, json.loads(report.read_text())


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["requirements"]}


def test_the_growing_checks_are_the_complexity_and_long_sequence_ones() -> None:
    growing = {r.id for r in load_requirements() if grows(r.id)}
    assert growing == {"ZS-ON-TIME", "ZS-ON-MEMORY", "ZS-ON-DECODE", "ZS-ON-STATE",
                       "ZS-ON-VARLEN", "ZS-STAB-LONG"}
    assert set(BLOCKERS) <= growing


@pytest.mark.parametrize(("mutant", "quantity", "message"), [
    ("hangs_when_long", "seconds", "did not finish within the wall-clock limit of 4 s"),
    ("allocates_when_long", "error", "MemoryError"),  # the 1 GiB cap refuses 4 GiB
    ("crashes_when_long", "crash", "died of SIGSEGV"),
])
def test_a_growing_check_that_misbehaves_fails_and_the_run_goes_on(
    tmp_path: Path, mutant: str, quantity: str, message: str
) -> None:
    start = time.perf_counter()
    code, report = run(tmp_path, mutant, "--only", "ZS-STAB-LONG", "--only",
                       "ZS-STAB-DEGENERATE", "--time-limit", "4", "--memory-limit", "1")
    assert time.perf_counter() - start < 60
    assert code == 1
    long, after = by_id(report)["ZS-STAB-LONG"], by_id(report)["ZS-STAB-DEGENERATE"]
    assert long["status"] == "failed"
    assert long["failure"]["quantity"] == quantity
    assert message in long["failure"]["message"]
    assert long["failure"]["case"], "a failure must say what it ran"
    assert after["status"] == "passed"
    assert report["complete"] is True


def test_a_crash_in_the_suites_own_process_leaves_a_report(tmp_path: Path) -> None:
    """ZS-DEF-* run in the suite's process: the dead run's report has what finished before."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "zeros_conformance.cli", "run", "--backend",
         f"{BROKEN}:crashes_bidirectional", "--quick", "--report", str(report),
         "--only", "ZS-DEF-CAUSAL", "--only", "ZS-DEF-BIDIRECTIONAL"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGSEGV
    partial = json.loads(report.read_text())
    assert (partial["complete"], partial["running"]) == (False, "ZS-DEF-BIDIRECTIONAL")
    assert [(r["id"], r["status"]) for r in partial["requirements"]] == [
        ("ZS-DEF-CAUSAL", "passed")]


@pytest.mark.slow  # about a minute: the full profile's sizes, until the guard stops them
def test_a_backend_with_quadratic_memory_gets_a_report_under_the_full_profile(
    tmp_path: Path
) -> None:
    """The explicit N x N definition in the full profile, where ZS-STAB-LONG alone would
    need about 80 GB: exit 1 with a complete report, in minutes."""
    report = tmp_path / "report.json"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "zeros_conformance.cli", "run", "--backend",
         f"{BROKEN}:quadratic", "--report", str(report), "--memory-limit", "3"],
        capture_output=True, text=True, timeout=600, check=False)
    assert time.perf_counter() - start < 300
    assert done.returncode == 1, done.stderr[-2000:]
    outcome = by_id(json.loads(report.read_text()))
    assert outcome["ZS-ON-TIME"]["status"] == "failed"
    assert outcome["ZS-ON-MEMORY"]["status"] == "failed"
    assert outcome["ZS-STAB-LONG"]["status"] == "blocked"
    assert "blocked by ZS-ON-TIME" in outcome["ZS-STAB-LONG"]["message"]
    assert outcome["ZS-ACC-REFERENCE"]["status"] == "passed"
    for text in ("ZS-ON-TIME failed", "ZS-ON-MEMORY failed", "ZS-STAB-LONG blocked",
                 "DOES NOT CONFORM"):
        assert text in done.stdout


def test_state_bytes_counts_what_a_state_keeps_alive() -> None:
    big = np.zeros((1000, 8))  # 64000 bytes
    views = {"a": big[-1], "b": big[:2]}  # views count their base, once
    assert state_bytes(views) == big.nbytes + sys.getsizeof("a") + sys.getsizeof("b")
    assert state_bytes([np.zeros(10), (np.zeros(5),)]) == 120
    cyclic: list = [np.zeros(4)]
    cyclic.append(cyclic)
    assert state_bytes(cyclic) == 32  # a cycle is walked once
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = np.zeros(3), np.zeros(4)
    assert state_bytes(objects) == objects.nbytes + 56
    assert state_bytes((np, len, state_bytes)) == 0  # code is not data


def test_state_bytes_of_tensors_counts_their_storage() -> None:
    torch = pytest.importorskip("torch", reason="needs torch")
    base = torch.zeros(1000, 8, dtype=torch.float32)
    assert state_bytes([base[-1], base[:3]]) == 32000
