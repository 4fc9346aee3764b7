"""The conformance suite as pytest tests (collected by the plugin with --zeros-backend)."""

from __future__ import annotations

import pytest

from zeros_conformance import registry
from zeros_conformance._harness import Context
from zeros_conformance.requirements import load_requirements
from zeros_conformance.runner import FAILED, PASSED, run_requirement


@pytest.fixture(scope="session")
def zeros_context(request: pytest.FixtureRequest) -> Context:
    target = request.config.getoption("--zeros-backend")
    try:
        backend = registry.load(target)
    except registry.BackendLoadError as exc:
        pytest.exit(f"cannot load ZeroS backend: {exc}", returncode=2)
    return Context(backend, target=target, profile=request.config.getoption("--zeros-profile"),
                   seed=request.config.getoption("--zeros-seed"))


@pytest.mark.parametrize("requirement", load_requirements(), ids=lambda r: r.id)
def test_requirement(requirement, zeros_context: Context) -> None:
    outcome = run_requirement(zeros_context, requirement)
    if outcome.status == PASSED:
        return
    if outcome.status not in (FAILED, "error"):
        pytest.skip(f"{requirement.id} {outcome.status}: {outcome.message}")
    if not outcome.required:
        pytest.xfail(f"SHOULD requirement failed:\n{outcome.explain()}")
    pytest.fail(outcome.explain(), pytrace=False)
