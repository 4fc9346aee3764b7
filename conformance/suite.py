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
    Context,
    Limits,
    Session,
    html_report,
    load_requirements,
    registry,
    xfails,
)


@pytest.fixture(scope="session")
def zeros_session(request: pytest.FixtureRequest) -> Session:
    option = request.config.getoption
    target = option("--zeros-backend")
    try:
        backend = registry.load(target)
    except registry.BackendLoadError as exc:
        pytest.exit(f"cannot load ZeroS backend: {exc}", returncode=2)
    ctx = Context(backend, target=target, profile=option("--zeros-profile"),
                  seed=option("--zeros-seed"))
    default = Limits()
    memory = option("--zeros-memory-limit")
    limits = Limits(default.memory_bytes if memory is None else int(memory * 2**30),
                    option("--zeros-time-limit") or default.seconds)
    listed = option("--zeros-xfails")
    try:
        expected = xfails.load(listed) if listed else {}
    except (OSError, ValueError) as exc:
        pytest.exit(f"--zeros-xfails: {exc}", returncode=4)
    session = Session(ctx, limits, expected)
    page = option("--zeros-html")
    if page:
        if not Path(page).parent.is_dir():
            pytest.exit(f"--zeros-html {page}: the folder does not exist", returncode=4)
        start = time.perf_counter()
        request.addfinalizer(lambda: Path(page).write_text(html_report.render(
            ctx, session.outcomes, time.perf_counter() - start,
            strict_xfails=option("--zeros-strict-xfails")), encoding="utf-8"))
    return session


@pytest.mark.parametrize("requirement", load_requirements(), ids=lambda r: r.id)
def test_requirement(requirement, zeros_session: Session,
                     request: pytest.FixtureRequest) -> None:
    outcome = zeros_session.outcome(requirement)
    if outcome.status == XFAIL:
        pytest.xfail(f"listed in --zeros-xfails: {outcome.expected_failure}")
    if outcome.status == XPASS and request.config.getoption("--zeros-strict-xfails"):
        pytest.fail(f"{requirement.id} passed but is listed in --zeros-xfails "
                    f"({outcome.expected_failure}): remove it from the list", pytrace=False)
    if outcome.status in (PASSED, XPASS):
        return
    if outcome.status not in NOT_CONFORMING:
        pytest.skip(f"{requirement.id} {outcome.status}: {outcome.message}")
    if not outcome.required:
        pytest.xfail(f"SHOULD requirement {outcome.status}:\n{outcome.explain()}")
    pytest.fail(outcome.explain(), pytrace=False)
