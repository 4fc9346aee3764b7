"""JUnit XML of a run (`zeros-conformance run --junit FILE`), read back with `junitparser`, the
parser CI tools and their plugins use, not with the ElementTree that wrote it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from zeros_conformance import cli, junit

BACKENDS = Path(__file__).parent / "backends"
BROKEN = BACKENDS / "broken.py"


def run(tmp_path: Path, target: str, *extra: str) -> tuple[int, dict[str, Any], TestSuite]:
    """Exit code, JSON report and the one test suite of the JUnit file of a quick run."""
    report, xml = tmp_path / "report.json", tmp_path / "junit.xml"
    code = cli.main(["run", "--backend", target, "--quick", "--report", str(report),
                     "--junit", str(xml), *extra])
    return code, json.loads(report.read_text()), only_suite(xml)


def only_suite(path: Path) -> TestSuite:
    suites = list(JUnitXml.fromfile(str(path)))
    assert len(suites) == 1, [s.name for s in suites]
    return suites[0]


def cases(suite: TestSuite) -> dict[str, TestCase]:
    return {case.name: case for case in suite}


def result(case: TestCase) -> Failure | Error | Skipped | None:
    """The one result element of a case, None when it passed."""
    found = list(case.result)
    assert len(found) <= 1, found
    return found[0] if found else None


def assert_counts_agree(suite: TestSuite, report: dict[str, Any], code: int) -> None:
    """The suite's attributes count its cases, and it is red exactly when the run failed."""
    results = [result(case) for case in suite]
    assert suite.tests == len(results) == len(report["requirements"])
    assert suite.failures == sum(isinstance(r, Failure) for r in results)
    assert suite.errors == sum(isinstance(r, Error) for r in results)
    assert suite.skipped == sum(isinstance(r, Skipped) for r in results)
    assert (suite.failures + suite.errors > 0) == (code != 0)
    assert [case.name for case in suite] == [r["id"] for r in report["requirements"]]


def case_json(text: str, heading: str) -> dict[str, Any]:
    """The JSON object under the line ``heading:`` of a result's text."""
    marker = f"\n{heading}:\n"
    assert marker in text, text
    return json.loads(text.split(marker, 1)[1])


def test_reference_run_has_one_case_per_requirement(tmp_path: Path) -> None:
    ids = ["ZS-DEF-GATES", "ZS-DEF-ZEROSUM", "ZS-STAB-RANGE", "ZS-GRAD", "ZS-API-KEYWORDS"]
    code, report, suite = run(tmp_path, "reference", "--seed", "5",
                              *[arg for i in ids for arg in ("--only", i)])
    assert code == 0
    assert_counts_agree(suite, report, code)
    assert suite.name == f"zeros-conformance[{report['backend']['name']}]"
    assert [case.name for case in suite] == ids  # the report's (spec) order
    found = cases(suite)
    for name in ("ZS-DEF-GATES", "ZS-DEF-ZEROSUM", "ZS-STAB-RANGE", "ZS-API-KEYWORDS"):
        assert found[name].is_passed, found[name].result
    assert [found[i].classname for i in ids] == [
        "zeros_conformance.def", "zeros_conformance.def", "zeros_conformance.stab",
        "zeros_conformance.grad", "zeros_conformance.api"]
    skipped = result(found["ZS-GRAD"])
    assert isinstance(skipped, Skipped) and skipped.message.startswith("not claimed")
    assert (suite.failures, suite.errors, suite.skipped) == (0, 0, 1)
    seconds = {r["id"]: r["seconds"] for r in report["requirements"]}
    assert all(case.time == pytest.approx(seconds[case.name], abs=1e-3) for case in suite)
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["seed"] == "5" and properties["profile"] == "quick"
    assert properties["backend_target"] == "reference"
    assert properties["dtypes"] == ",".join(report["backend"]["dtypes"])
    for key in ("suite_version", "spec_version"):
        assert properties[key] == report[key]
    assert properties["device"] == report["backend"]["device"]
    assert "level MUST, feature core" in found["ZS-DEF-GATES"].system_out


def test_a_failed_requirement_is_a_failure_with_value_limit_and_case(tmp_path: Path) -> None:
    code, report, suite = run(tmp_path, f"{BROKEN}:swapped_gates", "--only", "ZS-DEF-GATES")
    assert code == 1
    assert_counts_agree(suite, report, code)
    assert (suite.failures, suite.errors, suite.skipped) == (1, 0, 0)
    failure = result(cases(suite)["ZS-DEF-GATES"])
    assert isinstance(failure, Failure)
    (entry,) = report["requirements"]
    worst = entry["worst"]
    assert not worst["passed"]
    value, limit = f"{worst['value']:.3g}", f"{worst['limit']:.3g}"
    assert failure.message.startswith(f"{worst['quantity']} {value} > limit {limit}")
    assert float(value) > float(limit)
    assert case_json(failure.text, "case") == worst["case"]
    assert worst["case"]["dtype"] in failure.text and "gates act per query step" in failure.text


def test_an_exception_is_an_error_with_the_last_call(tmp_path: Path) -> None:
    code, report, suite = run(tmp_path, f"{BROKEN}:raises_bidirectional",
                              "--only", "ZS-DEF-ZEROSUM")
    assert code == 1
    assert_counts_agree(suite, report, code)
    error = result(cases(suite)["ZS-DEF-ZEROSUM"])
    assert isinstance(error, Error)
    assert error.type == "RuntimeError"
    assert error.message == "RuntimeError: kernel launch failed"
    last_call = case_json(error.text, "last call")
    assert last_call == report["requirements"][0]["failure"]["case"]
    assert (last_call["causal"], last_call["seed"]) == (False, 0)
    assert last_call["q"] == "float32 array [2, 50, 4]"


def test_an_unmet_should_is_skipped_with_its_measurement(tmp_path: Path) -> None:
    code, report, suite = run(tmp_path, f"{BROKEN}:spreads_v_nan",
                              "--only", "ZS-ERR-NONFINITE", "--only", "ZS-ERR-NONFINITE-V")
    assert code == 0
    assert_counts_agree(suite, report, code)
    found = cases(suite)
    assert found["ZS-ERR-NONFINITE"].is_passed
    skipped = result(found["ZS-ERR-NONFINITE-V"])
    assert isinstance(skipped, Skipped) and skipped.message.startswith("SHOULD not met: ")
    worst = report["requirements"][1]["worst"]
    assert f"limit {worst['limit']:.3g}" in skipped.message
    assert case_json(skipped.text, "case") == worst["case"]


def test_expected_failures(tmp_path: Path) -> None:
    listed = tmp_path / "xfails.txt"
    listed.write_text("ZS-DEF-GATES  # gates swapped, fixed in 0.3\n")
    code, report, suite = run(tmp_path, f"{BROKEN}:swapped_gates", "--only", "ZS-DEF-GATES",
                              "--xfails", str(listed))
    assert code == 0
    assert_counts_agree(suite, report, code)
    skipped = result(cases(suite)["ZS-DEF-GATES"])
    assert isinstance(skipped, Skipped)
    assert skipped.message == "expected failure: gates swapped, fixed in 0.3"

    for strict, red in ((), False), (("--strict-xfails",), True):
        code, report, suite = run(tmp_path, "reference", "--only", "ZS-DEF-GATES",
                                  "--xfails", str(listed), *strict)
        assert report["requirements"][0]["status"] == "xpass"
        assert_counts_agree(suite, report, code)
        xpass = result(cases(suite)["ZS-DEF-GATES"])
        assert isinstance(xpass, Failure) == red, xpass
        assert (xpass is None) == (not red)


def test_a_report_of_a_run_that_died_names_the_running_requirement(tmp_path: Path) -> None:
    _, report, _ = run(tmp_path, "reference", "--only", "ZS-DEF-GATES")
    report.update(complete=False, running="ZS-STAB-LONG")
    report["requirements"][0]["title"] = "control \x1b[31mcharacters\x00 are replaced"
    suite = only_suite(junit.write(report, tmp_path / "partial.xml"))
    assert "control \ufffd[31mcharacters\ufffd are" in cases(suite)["ZS-DEF-GATES"].system_out
    assert [case.name for case in suite] == ["ZS-DEF-GATES", "ZS-STAB-LONG"]
    error = result(cases(suite)["ZS-STAB-LONG"])
    assert isinstance(error, Error) and "stopped while this requirement" in error.message
    assert (suite.tests, suite.errors) == (2, 1)


@pytest.mark.parametrize(("requirement", "name"), [
    ("ZS-GRAD", "zeros_conformance.grad"),
    ("ZS-ERR-NONFINITE-V", "zeros_conformance.err"),
    ("ZS-LAYER-ROPE", "zeros_conformance.layer"),
])
def test_classname_is_the_family_of_the_id(requirement: str, name: str) -> None:
    assert junit.classname(requirement) == name


def test_a_missing_junit_folder_exits_2_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing" / "junit.xml"
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--backend", "no-such-backend", "--junit", str(path)])
    assert stop.value.code == 2
    assert f"--junit {path}" in capsys.readouterr().err
    assert not path.parent.exists()
