"""The status of a requirement in a run: the one place its strings are spelled."""

from __future__ import annotations

__all__ = [
    "BLOCKED",
    "ERROR",
    "FAILED",
    "NOT_APPLICABLE",
    "NOT_CLAIMED",
    "NOT_CONFORMING",
    "PASSED",
    "STATUSES",
    "XFAIL",
    "XPASS",
]

PASSED = "passed"
"""Every measurement within its limit."""
FAILED = "failed"
"""A measurement past its limit, or the backend crashed, ran out of memory or out of time."""
ERROR = "error"
"""The check could not finish: the backend raised where it must not, or the suite is broken."""
BLOCKED = "blocked"
"""Not run: an earlier complexity requirement failed, so a check that grows would not end."""
NOT_CLAIMED = "not claimed"
"""The requirement belongs to a feature the backend does not claim."""
NOT_APPLICABLE = "not applicable"
"""The backend's claims leave nothing to check (for example no dtype the check needs)."""

XFAIL = "xfail"
"""Not conforming, as the run's list of expected failures says; does not fail the run."""
XPASS = "xpass"
"""Listed as an expected failure but passed; fails the run only with strict xfails."""

STATUSES = (PASSED, FAILED, ERROR, BLOCKED, NOT_CLAIMED, NOT_APPLICABLE, XFAIL, XPASS)
NOT_CONFORMING = frozenset({FAILED, ERROR, BLOCKED})
"""Statuses that make a MUST requirement fail the run."""
