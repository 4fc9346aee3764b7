"""A conformance run: every requirement in spec order, the growing ones guarded or blocked.

Requirements whose checks grow with N (`runner.grows`) run in a child process with limits
(`_guard`), so a backend that exhausts memory or time fails them instead of killing the run.
Once a complexity requirement (`BLOCKERS`) has failed, the others that grow are *blocked*, not
run: a backend known to be superlinear would spend the run's time and memory on them and say
nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ._guard import Limits, run_guarded
from ._harness import Context
from .requirements import Requirement, load_requirements
from .runner import Outcome, exit_code, expect_failure, grows, run_requirement
from .status import BLOCKED, NOT_CONFORMING

__all__ = ["BLOCKERS", "Session", "run"]

BLOCKERS = ("ZS-ON-TIME", "ZS-ON-MEMORY")
"""Requirements whose failure blocks the other requirements that grow with N."""


Progress = Callable[[int, int, "Outcome | Requirement"], None]
"""``progress(number, total, item)``: a requirement about to run, or its outcome."""


class Session:
    """The outcomes of one backend so far; `outcome` runs the next requirement, `run` all of
    them (or those of `only`) in spec order.

    `limits=None` runs everything in this process (no guard), as does a context without a
    target to load the backend from in a child. `xfails` maps requirement IDs expected to fail
    to the reason (`xfails.load`); with `strict_xfails` one that passes fails the run
    (`exit_code`). `options.open_session` builds a session from the options of a command
    line.
    """

    def __init__(self, ctx: Context, limits: Limits | None = None,
                 xfails: Mapping[str, str] | None = None, *, only: Iterable[str] = (),
                 strict_xfails: bool = False) -> None:
        self.ctx = ctx
        self.limits = limits
        self.xfails = dict(xfails or {})
        self.strict_xfails = strict_xfails
        wanted = set(only)
        self.requirements = [r for r in load_requirements() if not wanted or r.id in wanted]
        """The requirements `run` runs, in spec order."""
        self.outcomes: list[Outcome] = []
        self._failed_blockers: list[str] = []

    def _blocker(self, requirement: Requirement) -> str | None:
        if requirement.id in BLOCKERS or not grows(requirement.id):
            return None
        return next(iter(self._failed_blockers), None)

    def outcome(self, requirement: Requirement) -> Outcome:
        """Run (or block) one requirement and remember its outcome."""
        claimed = requirement.feature in self.ctx.features
        blocker = self._blocker(requirement) if claimed else None
        if blocker is not None:
            outcome = Outcome(requirement, BLOCKED,
                              message=f"blocked by {blocker}, which failed: it grows with N")
        elif claimed and grows(requirement.id) and self.limits and self.ctx.target:
            outcome = run_guarded(self.ctx, requirement, self.limits)
        else:
            outcome = run_requirement(self.ctx, requirement)
        if requirement.id in BLOCKERS and outcome.status in NOT_CONFORMING:
            self._failed_blockers.append(requirement.id)  # even when listed as expected
        if requirement.id in self.xfails:
            outcome = expect_failure(outcome, self.xfails[requirement.id])
        self.outcomes.append(outcome)
        return outcome

    def run(self, progress: Progress | None = None) -> list[Outcome]:
        """Outcomes of the session's `requirements`, in spec order.

        `progress(number, total, item)` is called with each requirement before it runs and
        with its outcome after.
        """
        total = len(self.requirements)
        outcomes = []
        for number, requirement in enumerate(self.requirements, 1):
            if progress:
                progress(number, total, requirement)
            outcomes.append(self.outcome(requirement))
            if progress:
                progress(number, total, outcomes[-1])
        return outcomes

    def exit_code(self) -> int:
        """The exit status of the outcomes so far (`runner.exit_code`)."""
        return exit_code(self.outcomes, strict_xfails=self.strict_xfails)


def run(
    ctx: Context,
    *,
    only: Iterable[str] = (),
    limits: Limits | None = None,
    xfails: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Outcomes of all requirements (or of those in `only`), in spec order.

    `progress(number, total, item)` is called with each requirement before it runs and with
    its outcome after. `xfails` maps requirement IDs expected to fail to the reason
    (`xfails.load`).
    """
    return Session(ctx, limits, xfails, only=only).run(progress)
