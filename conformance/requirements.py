"""Requirement IDs, read from the normative text in ``spec/zeros-spec.md``.

Each requirement is a level-4 heading ``#### ZS-...: title`` followed by a line
``Level: MUST|SHOULD. Feature: NAME.`` The spec is the single source of the IDs: the suite
checks what the spec lists, and a test checks that the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["Requirement", "load_requirements", "requirement", "spec_path"]

SPEC_FILE = "zeros-spec.md"
_HEADING = re.compile(r"^#### (ZS-[A-Z0-9-]+): (.+)$")
_LEVEL = re.compile(r"^Level: (MUST|SHOULD)\. Feature: ([a-z_]+)\.$")


@dataclass(frozen=True)
class Requirement:
    """One normative requirement of the spec."""

    id: str
    title: str
    level: str
    feature: str


def spec_path() -> Path:
    """Path of the spec: shipped inside the package, or beside it in a source checkout."""
    shipped = resources.files("zeros_conformance") / "spec" / SPEC_FILE
    if shipped.is_file():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / "spec" / SPEC_FILE


def parse(text: str) -> tuple[Requirement, ...]:
    """Requirements of a spec text, in document order; `ValueError` on a malformed entry."""
    found: list[Requirement] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        heading = _HEADING.match(line)
        if not heading:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        level = _LEVEL.match(following)
        if not level:
            raise ValueError(
                f"spec line {index + 2}: requirement {heading.group(1)} needs a line "
                f"'Level: MUST|SHOULD. Feature: NAME.' under its heading; got {following!r}"
            )
        found.append(Requirement(heading.group(1), heading.group(2), *level.groups()))
    ids = [r.id for r in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"spec lists requirement IDs more than once: {duplicates}")
    return tuple(found)


@cache
def load_requirements() -> tuple[Requirement, ...]:
    """All requirements of the shipped spec."""
    return parse(spec_path().read_text(encoding="utf-8"))


def requirement(requirement_id: str) -> Requirement:
    """The requirement with this ID; `KeyError` naming it when the spec has none."""
    for found in load_requirements():
        if found.id == requirement_id:
            return found
    raise KeyError(f"the spec has no requirement {requirement_id!r}")


def spec_version() -> str:
    """The spec version stated on the document's first lines."""
    match = re.search(r"^Spec version ([0-9.]+)\.", spec_path().read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else "unknown"
