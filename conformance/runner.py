"""Running the checks of one requirement in this process, and the outcome per ID."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from . import checks  # noqa: F401  (registers the checks)
from ._harness import CHECKS, Context, Measurement, NotApplicable
from .requirements import Requirement, requirement
from .status import (
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    NOT_CLAIMED,
    NOT_CONFORMING,
    PASSED,
    XFAIL,
    XPASS,
)

__all__ = ["Outcome", "exit_code", "expect_failure", "grows", "run_requirement"]


@dataclass
class Outcome:
    """What the checks of one requirement found."""

    requirement: Requirement
    status: str
    measurements: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""
    expected_failure: str | None = None
    """The reason given in the run's list of expected failures, where the ID is listed."""

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
        if self.expected_failure is not None:
            lines.append(f"listed as an expected failure: {self.expected_failure}")
        if self.message:
            lines.append(self.message)
        bad = self.failure
        if bad is not None:
            lines.append(f"{bad.quantity} {bad.value:.4g} > limit {bad.limit:.4g}: {bad.message}")
            lines.append(f"case: {bad.case}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything of the outcome, for a parent process (`from_dict` inverts it)."""
        return {"id": self.requirement.id, "status": self.status, "seconds": self.seconds,
                "message": self.message, "measurements": [asdict(m) for m in self.measurements]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(requirement(data["id"]), data["status"],
                   [Measurement(**m) for m in data["measurements"]], data["seconds"],
                   data["message"])


def grows(requirement_id: str) -> bool:
    """Whether a check of the requirement grows with N (`check(..., grows=True)`)."""
    return any(c.grows for c in CHECKS if c.requirement == requirement_id)


def _raised(ctx: Context, exc: BaseException) -> Measurement:
    """The measurement of a backend (or check) that raised: type, message and the last call."""
    where = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if isinstance(exc, MemoryError):
        return Measurement(math.inf, 0.0, dict(ctx.last_call), quantity="memory",
                           message=f"ran out of memory ({where})", passed=False)
    return Measurement(math.inf, 0.0, dict(ctx.last_call), quantity="exception",
                       message=f"raised {where}", passed=False)


def run_requirement(ctx: Context, requirement: Requirement) -> Outcome:
    """Run every check registered for `requirement` in this process.

    A check that raises ends the requirement: `MemoryError` is a failure, anything else an
    error. Either is reported with the exception and the arguments of the backend's last call.
    """
    if requirement.feature not in ctx.features:
        return Outcome(requirement, NOT_CLAIMED, message=f"feature {requirement.feature!r}")
    functions = [c.function for c in CHECKS if c.requirement == requirement.id]
    if not functions:
        return Outcome(requirement, ERROR, message="no check is registered for this ID")
    start = time.perf_counter()
    measurements: list[Measurement] = []
    ctx.last_call = {}
    try:
        for function in functions:
            for measurement in function(ctx):
                measurements.append(measurement)
    except NotApplicable as why:
        return Outcome(requirement, NOT_APPLICABLE, measurements,
                       time.perf_counter() - start, str(why))
    except Exception as exc:
        raised = _raised(ctx, exc)
        status = FAILED if raised.quantity == "memory" else ERROR
        return Outcome(requirement, status, [*measurements, raised],
                       time.perf_counter() - start, f"the check {raised.message}")
    failed = any(not m.passed for m in measurements)
    return Outcome(requirement, FAILED if failed else PASSED, measurements,
                   time.perf_counter() - start)


def expect_failure(outcome: Outcome, reason: str) -> Outcome:
    """The outcome of a requirement listed as an expected failure: `XFAIL` where it does not
    conform, `XPASS` where it passed; other statuses (not claimed...) are kept."""
    outcome.expected_failure = reason
    if outcome.status in NOT_CONFORMING:
        outcome.status = XFAIL
    elif outcome.status == PASSED:
        outcome.status = XPASS
    return outcome


def exit_code(outcomes: list[Outcome], *, strict_xfails: bool = False) -> int:
    """0 when every MUST requirement of the claimed features passed (or failed as listed),
    else 1; with `strict_xfails` a listed requirement that passed fails the run too."""
    failed = any(o.required and o.status in NOT_CONFORMING for o in outcomes)
    return int(failed or (strict_xfails and any(o.status == XPASS for o in outcomes)))
