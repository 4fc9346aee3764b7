"""Incremental adoption: requirements listed as expected failures (``--xfails FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zeros_conformance import cli, xfails

BROKEN = Path(__file__).parent / "backends" / "broken.py"


def run(tmp_path: Path, listed: str, *extra: str) -> tuple[int, dict]:
    listing = tmp_path / "xfails.txt"
    listing.write_text(listed)
    report = tmp_path / "report.json"
    code = cli.main(["run", "--backend", f"{BROKEN}:swapped_gates", "--quick", "--report",
                     str(report), "--xfails", str(listing), "--only", "ZS-DEF-GATES",
                     "--only", "ZS-DEF-ZEROSUM", *extra])
    return code, {r["id"]: r for r in json.loads(report.read_text())["requirements"]}


def test_a_listed_failure_is_xfail_and_the_run_passes(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    code, found = run(tmp_path, "# known\n\nZS-DEF-GATES   # gates swapped until 2.0\n")
    assert code == 0
    assert found["ZS-DEF-GATES"]["status"] == "xfail"
    assert found["ZS-DEF-GATES"]["expected_failure"] == "gates swapped until 2.0"
    assert found["ZS-DEF-GATES"]["failure"]["case"]  # what failed is still reported
    assert found["ZS-DEF-ZEROSUM"]["status"] == "passed"
    assert "ZS-DEF-GATES xfail: gates swapped until 2.0" in capsys.readouterr().out


def test_a_listed_pass_is_xpass_and_fails_only_when_strict(tmp_path: Path) -> None:
    listed = "ZS-DEF-GATES # swapped\nZS-DEF-ZEROSUM # thought broken\n"
    code, found = run(tmp_path, listed)
    assert (code, found["ZS-DEF-ZEROSUM"]["status"]) == (0, "xpass")
    code, found = run(tmp_path, listed, "--strict-xfails")
    assert code == 1 and found["ZS-DEF-GATES"]["status"] == "xfail"


def test_an_unlisted_failure_still_fails(tmp_path: Path) -> None:
    code, found = run(tmp_path, "ZS-DEF-ZEROSUM\n")
    assert code == 1 and found["ZS-DEF-GATES"]["status"] == "failed"
    assert found["ZS-DEF-ZEROSUM"]["expected_failure"] == "no reason given"


@pytest.mark.parametrize(("text", "message"), [
    ("ZS-NOPE # typo\n", "xfails.txt:1: 'ZS-NOPE' is not a requirement ID"),
    ("ZS-DEF-GATES\nZS-DEF-GATES\n", "xfails.txt:2: ZS-DEF-GATES is listed twice"),
])
def test_a_bad_list_is_refused_naming_the_line(tmp_path: Path, text: str, message: str,
                                              capsys: pytest.CaptureFixture) -> None:
    listing = tmp_path / "xfails.txt"
    listing.write_text(text)
    with pytest.raises(ValueError, match=message):
        xfails.load(listing)
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--backend", "reference", "--xfails", str(listing)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_pytest_plugin_reads_the_same_list(pytester: pytest.Pytester) -> None:
    listing = pytester.path / "xfails.txt"
    listing.write_text("ZS-DEF-GATES # swapped\nZS-DEF-ZEROSUM # wrongly listed\n")
    target = f"--zeros-backend={BROKEN}:swapped_gates"
    result = pytester.runpytest(target, f"--zeros-xfails={listing}", "-k", "GATES or ZEROSUM",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, xfailed=1)
    strict = pytester.runpytest(target, f"--zeros-xfails={listing}", "--zeros-strict-xfails",
                                "-k", "GATES or ZEROSUM", "-p", "no:cacheprovider")
    strict.assert_outcomes(failed=1, xfailed=1)
    strict.stdout.fnmatch_lines(["*ZS-DEF-ZEROSUM passed but is listed in --zeros-xfails*"])
