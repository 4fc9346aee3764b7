"""Reports of a run: JSON (machine-readable, with reproductions), Markdown and a terminal table."""

from __future__ import annotations

import math
from typing import Any

import zeros_machine
from zeros_ref import __version__ as reference_version

from . import protocol
from ._harness import Context, Measurement
from .requirements import spec_version
from .runner import Outcome, exit_code
from .status import NOT_CONFORMING

__all__ = ["markdown", "summary_table", "to_json"]

SUITE_VERSION = "0.1.0"


def _number(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _measurement(m: Measurement) -> dict[str, Any]:
    entry = {"quantity": m.quantity, "value": _number(float(m.value)),
             "limit": _number(float(m.limit)), "passed": m.passed, "case": m.case,
             "message": m.message}
    if m.details.get("row_errors"):
        entry["details"] = {**m.details,
                            "row_errors": [_number(x) for x in m.details["row_errors"]]}
    return entry


def _worst(o: Outcome) -> str:
    w = o.worst
    if w is None:
        return o.message or (o.expected_failure or "")
    return f"{w.value:.3g} / {w.limit:.3g} ({w.quantity})"


def to_json(
    ctx: Context, outcomes: list[Outcome], seconds: float, *, running: str | None = None,
    strict_xfails: bool = False,
) -> dict[str, Any]:
    """The report of spec section 10: versions, backend, machine and every requirement.

    A report written while the run goes on names the requirement `running` and has
    ``complete: false``; if the process dies, that is what it leaves.
    """
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    backend = ctx.backend
    return {
        "suite_version": SUITE_VERSION,
        "spec_version": spec_version(),
        "reference_version": reference_version,
        "backend": {"name": protocol.name(backend), "target": ctx.target,
                    "device": protocol.device(backend),
                    "dtypes": list(ctx.dtypes), "features": sorted(ctx.features)},
        "profile": ctx.profile,
        "seed": ctx.seed,
        "machine": zeros_machine.line(zeros_machine.describe()),
        "seconds": round(seconds, 3),
        "complete": running is None,
        "running": running,
        "exit_code": exit_code(outcomes, strict_xfails=strict_xfails),
        "strict_xfails": strict_xfails,
        "summary": counts,
        "requirements": [
            {"id": o.requirement.id, "title": o.requirement.title,
             "level": o.requirement.level, "feature": o.requirement.feature,
             "status": o.status, "seconds": round(o.seconds, 3), "message": o.message,
             "expected_failure": o.expected_failure,
             "worst": None if o.worst is None else _measurement(o.worst),
             "failure": None if o.failure is None else _measurement(o.failure),
             "measured": [_measurement(m) for m in o.measurements]}
            for o in outcomes
        ],
    }


def summary_table(outcomes: list[Outcome]) -> str:
    """A fixed-width table for the terminal."""
    rows = [("ID", "level", "status", "worst / limit", "title")]
    rows += [(o.requirement.id, o.requirement.level, o.status, _worst(o), o.requirement.title)
             for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
             for row in rows]
    lines.insert(1, "-" * min(120, len(lines[0])))
    return "\n".join(lines)


def markdown(ctx: Context, outcomes: list[Outcome], seconds: float, *,
             strict_xfails: bool = False) -> str:
    """The report as a Markdown table, with the failing cases below it."""
    report = to_json(ctx, outcomes, seconds, strict_xfails=strict_xfails)
    b = report["backend"]
    lines = [f"# ZeroS conformance: {b['name']}", "",
             f"Suite {report['suite_version']}, spec {report['spec_version']}, profile "
             f"{ctx.profile}, seed {ctx.seed}, {seconds:.1f} s.  ",
             f"Backend `{b['target']}` on {b['device']}, dtypes {', '.join(b['dtypes'])}, "
             f"features {', '.join(b['features'])}.  ", f"Machine: {report['machine']}", "",
             "| ID | level | status | worst / limit | title |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {o.requirement.id} | {o.requirement.level} | {o.status} | {_worst(o)} | "
              f"{o.requirement.title} |" for o in outcomes]
    failing = [o for o in outcomes if o.status in NOT_CONFORMING]
    if failing:
        lines += ["", "## Failures", ""]
        lines += ["```\n" + o.explain() + "\n```" for o in failing]
    listed = [o for o in outcomes if o.expected_failure is not None]
    if listed:
        lines += ["", "## Expected failures", "", "| ID | status | reason |",
                  "| --- | --- | --- |"]
        lines += [f"| {o.requirement.id} | {o.status} | {o.expected_failure} |" for o in listed]
    return "\n".join(lines) + "\n"
