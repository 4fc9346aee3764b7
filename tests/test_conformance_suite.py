"""The suite itself: it passes correct backends, reports what a broken one did, and keeps a
mutant's failures to the requirements it breaks (the table of mutants and the IDs each must
fail is tests/test_mutants.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zeros_conformance import cli, load_requirements

BACKENDS = Path(__file__).parent / "backends"
ALL_IDS = [r.id for r in load_requirements()]


def run(tmp_path: Path, target: str, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    code = cli.main(["run", "--backend", target, "--quick", "--report", str(report), *extra])
    return code, json.loads(report.read_text())


def statuses(report: dict) -> dict[str, str]:
    return {r["id"]: r["status"] for r in report["requirements"]}


@pytest.mark.parametrize("target", [
    "reference",
    f"{BACKENDS / 'recurrent.py'}:backend",
    f"{BACKENDS / 'logsumexp_chunked.py'}:backend",
])
def test_correct_backends_conform(tmp_path: Path, target: str) -> None:
    code, report = run(tmp_path, target)
    bad = {i: s for i, s in statuses(report).items() if s in ("failed", "error")}
    assert code == 0, bad
    assert [r["id"] for r in report["requirements"]] == ALL_IDS


@pytest.mark.parametrize(("mutant", "failing"), [
    ("cumulative_sums", {"ZS-ON-MEMORY"}),
    ("history_state", {"ZS-ON-DECODE", "ZS-ON-STATE"}),
])
def test_a_mutant_of_complexity_passes_everything_else(
    tmp_path: Path, mutant: str, failing: set[str]
) -> None:
    """Their outputs are right: only the complexity requirements planted wrong may fail."""
    extra = [arg for r in ALL_IDS if r not in failing for arg in ("--only", r)]
    code, report = run(tmp_path, f"{BACKENDS / 'broken.py'}:{mutant}", *extra)
    assert code == 0, statuses(report)


def test_a_kernel_that_spreads_nan_of_v_within_a_chunk_conforms(tmp_path: Path) -> None:
    """`where(mask, W, 0) @ V` leaks a non-finite v_i into rows t < i of its chunk: that fails
    the SHOULD of ZS-ERR-NONFINITE-V only, and q, k, logits and gates still must not leak."""
    code, report = run(tmp_path, f"{BACKENDS / 'broken.py'}:spreads_v_nan",
                       "--only", "ZS-ERR-NONFINITE", "--only", "ZS-ERR-NONFINITE-V")
    assert statuses(report) == {"ZS-ERR-NONFINITE": "passed", "ZS-ERR-NONFINITE-V": "failed"}
    assert code == 0


def test_an_exception_is_reported_with_its_case_and_the_run_goes_on(tmp_path: Path) -> None:
    code, report = run(tmp_path, f"{BACKENDS / 'broken.py'}:raises_bidirectional",
                       "--only", "ZS-DEF-ZEROSUM", "--only", "ZS-DEF-CAUSAL")
    assert code == 1
    zerosum, causal = report["requirements"]
    assert (zerosum["status"], causal["status"]) == ("error", "passed")
    failure = zerosum["failure"]
    assert failure["message"] == "raised RuntimeError: kernel launch failed"
    assert failure["case"]["causal"] is False
    assert failure["case"]["q"] == "float32 array [2, 50, 4]"
    assert failure["case"]["seed"] == 0


def test_report_has_what_reproduces_a_run(tmp_path: Path) -> None:
    markdown = tmp_path / "report.md"
    code, report = run(tmp_path, "reference", "--seed", "7", "--markdown", str(markdown),
                       "--only", "ZS-DEF-ZEROSUM", "--only", "ZS-GRAD")
    assert code == 0
    for key in ("suite_version", "spec_version", "backend", "machine", "seed", "profile"):
        assert report[key] not in (None, ""), key
    assert report["seed"] == 7
    assert (report["complete"], report["running"]) == (True, None)
    assert report["backend"]["dtypes"] == ["float16", "float32", "float64"]
    zerosum, grad = report["requirements"]
    assert zerosum["status"] == "passed" and zerosum["measured"]
    assert {"value", "limit", "case"} <= set(zerosum["worst"])
    assert grad["status"] == "not claimed"
    assert "| ZS-DEF-ZEROSUM | MUST | passed |" in markdown.read_text()


@pytest.mark.parametrize("argv", [
    ["run", "--backend", "no-such-backend"],
    ["run", "--backend", "no_such_module:backend"],
    ["run", "--backend", "missing/file.py:backend"],
    ["run", "--backend", "reference", "--dtype", "bfloat16"],
    ["run", "--backend", "reference", "--only", "ZS-NOPE"],
])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert capsys.readouterr().err.strip()


def test_list_and_requirements(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["list"]) == 0
    assert "reference" in capsys.readouterr().out.split()
    assert cli.main(["requirements"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ALL_IDS


def test_pytest_plugin_runs_the_suite(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--zeros-backend=reference", "-k", "ZEROSUM or GRAD", "-v", "-p",
                                "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*test_requirement?ZS-DEF-ZEROSUM?*"])


def test_pytest_plugin_fails_a_broken_backend(pytester: pytest.Pytester) -> None:
    target = f"{BACKENDS / 'broken.py'}:swapped_gates"
    result = pytester.runpytest(f"--zeros-backend={target}", "-k", "GATES", "-p",
                                "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ZS-DEF-GATES failed*"])


def _full_run(tmp_path: Path, backend: str, seed: int) -> None:
    report = tmp_path / "full.json"
    code = cli.main(["run", "--backend", backend, "--seed", str(seed), "--report", str(report)])
    assert code == 0, statuses(json.loads(report.read_text()))


@pytest.mark.parametrize("backend", ["reference", "numpy"])
def test_full_profile_conforms(tmp_path: Path, backend: str) -> None:
    """The full profile (the sizes a backend is judged by) in the default run; the torch
    backend's full run is in tests/test_torch_backend.py."""
    _full_run(tmp_path, backend, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("backend", ["reference", "numpy", "torch"])
def test_full_runs_are_not_flaky(tmp_path: Path, backend: str, seed: int) -> None:
    if backend == "torch":
        pytest.importorskip("torch", reason="the torch backend needs torch")
    _full_run(tmp_path, backend, seed)


LAYERS = BACKENDS / "broken_layer.py"
LAYER_IDS = [r for r in ALL_IDS if r.startswith("ZS-LAYER")]


@pytest.mark.parametrize(("mutant", "failing"), [
    ("layer", set()),
    ("authors_rope", {"ZS-LAYER-ROPE", "ZS-LAYER-REFERENCE"}),
    ("count_tau_plus_i", {"ZS-LAYER-REFERENCE"}),
    ("whole_sequence_mean", {"ZS-LAYER-CAUSAL", "ZS-LAYER-REFERENCE"}),
])
def test_layers_of_published_mistakes_are_rejected(
    tmp_path: Path, mutant: str, failing: set[str]
) -> None:
    """The layer is written from spec table 13.1 independently of zeros_ref.layer; its twins
    plant the authors' RoPE construction, the tau + i bidirectional count and a causal mean
    of u over the whole sequence."""
    extra = [arg for r in LAYER_IDS for arg in ("--only", r)]
    code, report = run(tmp_path, f"{LAYERS}:{mutant}", *extra)
    found = {i for i, s in statuses(report).items() if s == "failed"}
    assert found == failing
    assert code == int(bool(failing))
    assert statuses(report)["ZS-LAYER-STREAM"] == "not applicable"  # no "state" claimed
