"""Running the checks of every requirement against one backend, and the outcome per ID."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import checks  # noqa: F401  (registers the checks)
from ._harness import CHECKS, Context, Measurement, NotApplicable
from .requirements import Requirement, load_requirements

__all__ = ["Outcome", "run", "run_requirement"]

PASSED, FAILED, ERROR = "passed", "failed", "error"
NOT_CLAIMED, NOT_APPLICABLE = "not claimed", "not applicable"


@dataclass
class Outcome:
    """What the checks of one requirement found."""

    requirement: Requirement
    status: str
    measurements: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""

    @property
    def required(self) -> bool:
        """A failure here makes the run fail: MUST requirements only."""
        return self.requirement.level == "MUST"

    @property
    def worst(self) -> Measurement | None:
        """The measurement closest to (or furthest past) its limit."""
        def closeness(m: Measurement) -> tuple[bool, float]:
            if m.limit > 0:
                return (not m.passed, m.value / m.limit)
            return (not m.passed, m.value)

        return max(self.measurements, key=closeness, default=None)

    @property
    def failure(self) -> Measurement | None:
        return next((m for m in self.measurements if not m.passed), None)

    def explain(self) -> str:
        """One paragraph: status, worst measurement and the failing case to reproduce."""
        lines = [f"{self.requirement.id} {self.status}: {self.requirement.title}"]
        if self.message:
            lines.append(self.message)
        bad = self.failure
        if bad is not None:
            lines.append(f"{bad.quantity} {bad.value:.4g} > limit {bad.limit:.4g}: {bad.message}")
            lines.append(f"case: {bad.case}")
        return "\n".join(lines)


def run_requirement(ctx: Context, requirement: Requirement) -> Outcome:
    """Run every check registered for `requirement`."""
    if requirement.feature not in ctx.features:
        return Outcome(requirement, NOT_CLAIMED, message=f"feature {requirement.feature!r}")
    functions = [c.function for c in CHECKS if c.requirement == requirement.id]
    if not functions:
        return Outcome(requirement, ERROR, message="no check is registered for this ID")
    start = time.perf_counter()
    measurements: list[Measurement] = []
    try:
        for function in functions:
            for measurement in function(ctx):
                measurements.append(measurement)
    except NotApplicable as why:
        return Outcome(requirement, NOT_APPLICABLE, measurements,
                       time.perf_counter() - start, str(why))
    except Exception as exc:
        where = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(requirement, ERROR, measurements, time.perf_counter() - start,
                       f"check raised {where} (seed {ctx.seed})")
    failed = any(not m.passed for m in measurements)
    return Outcome(requirement, FAILED if failed else PASSED, measurements,
                   time.perf_counter() - start)


def run(
    ctx: Context,
    *,
    only: Iterable[str] = (),
    progress: Callable[[int, int, Outcome | Requirement], None] | None = None,
) -> list[Outcome]:
    """Outcomes of all requirements (or of those in `only`), in spec order."""
    wanted = set(only)
    requirements = [r for r in load_requirements() if not wanted or r.id in wanted]
    outcomes = []
    for number, requirement in enumerate(requirements, 1):
        if progress:
            progress(number, len(requirements), requirement)
        outcomes.append(run_requirement(ctx, requirement))
        if progress:
            progress(number, len(requirements), outcomes[-1])
    return outcomes


def exit_code(outcomes: list[Outcome]) -> int:
    """0 when every MUST requirement of the claimed features passed, else 1."""
    return int(any(o.required and o.status in (FAILED, ERROR) for o in outcomes))
