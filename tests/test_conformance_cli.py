"""`zeros-conformance run` refuses wrong arguments with exit status 2 before anything runs:
seeds, dtypes, limits and the paths of the reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeros_conformance import cli, registry


def exit_status(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a backend fails the test: argument errors come before it."""

    def load(target: str) -> None:
        raise AssertionError(f"the backend {target!r} was loaded before the arguments were checked")

    monkeypatch.setattr(registry, "load", load)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("-5", "must be in 0..4294967295; got -5"),
        ("4294967296", "must be in 0..4294967295"),
        ("1e3", "not an integer"),
    ],
)
def test_a_bad_seed_exits_2_before_the_run(
    seed: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_backend: None
) -> None:
    report = tmp_path / "r.json"
    argv = ["run", "--backend", "numpy", "--seed", seed, "--report", str(report)]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and message in err
    assert not report.exists()


@pytest.mark.parametrize("option", ["--report", "--markdown", "--html"])
def test_a_missing_report_folder_exits_2_before_the_run(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_backend: None
) -> None:
    path = tmp_path / "missing" / "folder" / "r.out"
    assert exit_status(["run", "--backend", "numpy", option, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{option} {path}" in err and "does not exist" in err
    assert not path.parent.exists(), "the folder must not be created"


def test_a_report_path_that_is_a_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_backend: None
) -> None:
    assert exit_status(["run", "--backend", "numpy", "--html", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "limit", [["--memory-limit", "0"], ["--time-limit", "nan"], ["--memory-limit", "inf"]]
)
def test_bad_limits_exit_2_before_the_run(limit: list[str], no_backend: None) -> None:
    assert exit_status(["run", "--backend", "numpy", *limit]) == 2


def test_a_dtype_the_backend_does_not_claim_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "r.json"
    argv = ["run", "--backend", "numpy", "--dtype", "bfloat16", "--report", str(report)]
    assert exit_status(argv) == 2
    assert "--dtype bfloat16 is not claimed" in capsys.readouterr().err
    assert not report.exists()


def test_help_says_the_folder_is_not_created(capsys: pytest.CaptureFixture) -> None:
    assert exit_status(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "must exist: it is not created" in text and "--html" in text and "--spec-url" in text
