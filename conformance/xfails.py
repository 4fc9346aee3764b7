"""Expected failures: the requirement IDs a backend is known to fail today, with the reason.

A file lists one ID a line, the reason after ``#``; blank lines and lines that are only a
comment are skipped::

    ZS-ON-TIME        # the reference loop of our prototype is quadratic; fixed in 2.0
    ZS-ERR-NONFINITE-V  # matmul kernel spreads NaN of v within a chunk (a SHOULD)

In a run, a listed requirement that fails is reported as `xfail` and does not fail the run;
one that passes is reported as `xpass` (and fails the run with strict xfails), so that an
adopter's CI stays green on known failures and learns the day one of them is fixed.
"""

from __future__ import annotations

from pathlib import Path

from .requirements import load_requirements

__all__ = ["load"]


def load(path: str | Path) -> dict[str, str]:
    """ID -> reason from the file at `path`; `ValueError` naming the line of an unknown or
    repeated ID, `OSError` if the file cannot be read."""
    known = {r.id for r in load_requirements()}
    listed: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        entry, _, reason = line.partition("#")
        entry = entry.strip()
        if not entry:
            continue
        if entry not in known:
            raise ValueError(f"{path}:{number}: {entry!r} is not a requirement ID of the spec")
        if entry in listed:
            raise ValueError(f"{path}:{number}: {entry} is listed twice")
        listed[entry] = reason.strip() or "no reason given"
    return listed
