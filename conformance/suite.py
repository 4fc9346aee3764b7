"""The conformance suite as pytest tests (collected by the plugin with --zeros-backend)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zeros_conformance import (
    NOT_CONFORMING,
    PASSED,
    XFAIL,
    XPASS,
    Session,
    html_report,
    load_requirements,
)
from zeros_conformance.options import BackendError, OptionError, RunOptions, open_session


def _flag(option: str) -> str:
    """How the plugin spells the field `option` of `RunOptions`."""
    return "--zeros-" + option.replace("_", "-")


@pytest.fixture(scope="session")
def zeros_session(request: pytest.FixtureRequest) -> Session:
    option = request.config.getoption
    options = RunOptions(option("--zeros-backend"), profile=option("--zeros-profile"),
                         seed=option("--zeros-seed"), xfails=option("--zeros-xfails"),
                         strict_xfails=option("--zeros-strict-xfails"),
                         memory_limit=option("--zeros-memory-limit"),
                         time_limit=option("--zeros-time-limit"))
    try:
        session = open_session(options, flag=_flag)
    except OptionError as exc:
        pytest.exit(str(exc), returncode=4)
    except BackendError as exc:
        pytest.exit(f"ZeroS conformance: {exc}", returncode=2)
    page = option("--zeros-html")
    if page:
        if not Path(page).parent.is_dir():
            pytest.exit(f"--zeros-html {page}: the folder does not exist", returncode=4)
        start = time.perf_counter()
        request.addfinalizer(lambda: Path(page).write_text(html_report.render(
            session.ctx, session.outcomes, time.perf_counter() - start,
            strict_xfails=session.strict_xfails), encoding="utf-8"))
    return session


@pytest.mark.parametrize("requirement", load_requirements(), ids=lambda r: r.id)
def test_requirement(requirement, zeros_session: Session) -> None:
    outcome = zeros_session.outcome(requirement)
    if outcome.status == XFAIL:
        pytest.xfail(f"listed in --zeros-xfails: {outcome.expected_failure}")
    if outcome.status == XPASS and zeros_session.strict_xfails:
        pytest.fail(f"{requirement.id} passed but is listed in --zeros-xfails "
                    f"({outcome.expected_failure}): remove it from the list", pytrace=False)
    if outcome.status in (PASSED, XPASS):
        return
    if outcome.status not in NOT_CONFORMING:
        pytest.skip(f"{requirement.id} {outcome.status}: {outcome.message}")
    if not outcome.required:
        pytest.xfail(f"SHOULD requirement {outcome.status}:\n{outcome.explain()}")
    pytest.fail(outcome.explain(), pytrace=False)
