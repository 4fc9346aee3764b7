"""The spec and the code agree: IDs, their checks and tests, and the tolerance table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zeros_conformance import (
    CHECKS,
    TOLERANCE,
    checks,  # noqa: F401  (registers the checks)
)
from zeros_conformance.requirements import load_requirements, parse, spec_path

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"ZS-[A-Z]+(?:-[A-Z0-9]+)+")


def cited(folder: Path) -> set[str]:
    """IDs named in the Python files under `folder` (except this file's malformed examples)."""
    paths = [p for p in folder.rglob("*.py") if p.resolve() != Path(__file__).resolve()]
    return {m for path in paths for m in ID.findall(path.read_text())}


def test_spec_lists_requirements() -> None:
    ids = [r.id for r in load_requirements()]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert all(r.level in ("MUST", "SHOULD") for r in load_requirements())


def test_every_requirement_has_a_conformance_check() -> None:
    spec_ids = {r.id for r in load_requirements()}
    checked = {c.requirement for c in CHECKS}
    assert spec_ids - checked == set(), "requirements without a check"
    assert checked - spec_ids == set(), "checks of unknown requirements"


def test_every_requirement_is_cited_by_a_test_and_no_unknown_id_is() -> None:
    spec_ids = {r.id for r in load_requirements()}
    in_tests = cited(ROOT / "tests") | {c.requirement for c in CHECKS}
    assert spec_ids - in_tests == set()
    everywhere = in_tests | cited(ROOT / "zeros_ref") | cited(ROOT / "backends")
    everywhere |= cited(ROOT / "conformance")
    assert everywhere - spec_ids == set(), "code or tests cite IDs the spec does not define"


def test_features_are_known() -> None:
    assert {r.feature for r in load_requirements()} <= {
        "core", "bidirectional", "state", "default_logits", "grad", "layer"}


def test_tolerance_table_matches_the_code() -> None:
    text = spec_path().read_text()
    table = dict(re.findall(r"^\| (float\d+|bfloat16) \| ([0-9.e-]+) \|$", text, re.M))
    assert {k: float(v) for k, v in table.items()} == TOLERANCE


def test_a_malformed_entry_is_reported_at_its_line() -> None:
    text = "# Spec\n\n#### ZS-X-Y: title\nLevel: MAYBE. Feature: core.\nbody\n"
    with pytest.raises(ValueError, match=r"^spec line 4: .*got 'Level: MAYBE. Feature: core.'$"):
        parse(text)


@pytest.mark.parametrize("bad", [
    "#### ZS-X-Y: title\nLevel: MAYBE. Feature: core.\n",
    "#### ZS-X-Y: title\nLevel: MUST. Feature: core.\n#### ZS-X-Y: again\n"
    "Level: MUST. Feature: core.\n",
])
def test_malformed_spec_entries_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="ZS-X-Y"):
        parse(bad)
