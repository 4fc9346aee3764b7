"""The spec and the code agree: IDs, their checks and tests, and the tolerance table."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from test_mutants import MUTANTS

from zeros_conformance import (
    CHECKS,
    TOLERANCE,
    checks,  # noqa: F401  (registers the checks)
)
from zeros_conformance.protocol import FEATURES
from zeros_conformance.requirements import load_requirements, parse, spec_path

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"(?<![\w-])ZS-[A-Z]+(?:-[A-Z0-9]+)*(?![\w-])")
"""A requirement ID as a whole token, of one part (ZS-GRAD) or more (ZS-ERR-NONFINITE-V):
never the head of a longer ID (ZS-ERR-NONFINITE inside ZS-ERR-NONFINITE-V) nor a wildcard
(ZS-DEF-*)."""
NOT_IDS = {"ZS-NOPE"}
"""Tokens that tests pass on purpose as unknown IDs, to see them rejected."""


def cited(folder: Path) -> set[str]:
    """IDs named in the Python files under `folder` (except this file's malformed examples)."""
    paths = [p for p in folder.rglob("*.py") if p.resolve() != Path(__file__).resolve()]
    return {m for path in paths for m in ID.findall(path.read_text())}


def spec_ids() -> set[str]:
    return {r.id for r in load_requirements()}


def uncovered(ids: Iterable[str], table: Iterable[Any]) -> set[str]:
    """The IDs of `ids` that no row of the mutant table (rows with a `requirement`, as
    `test_mutants.MUTANTS`) must fail."""
    return set(ids) - {row.requirement for row in table}


def test_spec_lists_requirements() -> None:
    ids = [r.id for r in load_requirements()]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert all(r.level in ("MUST", "SHOULD") for r in load_requirements())


def test_every_requirement_has_a_conformance_check() -> None:
    spec_ids = {r.id for r in load_requirements()}
    checked = {c.requirement for c in CHECKS}
    assert spec_ids - checked == set(), "requirements without a check"
    assert checked - spec_ids == set(), "checks of unknown requirements"


def test_the_id_pattern_takes_whole_ids_of_any_length() -> None:
    text = ("ZS-GRAD, ZS-ERR-NONFINITE-V and ZS-ON-TIME; not ZS-DEF-* nor xZS-GRAD, "
            "ZS-GRAD_2 or zs-grad")
    assert ID.findall(text) == ["ZS-GRAD", "ZS-ERR-NONFINITE-V", "ZS-ON-TIME"]


def test_every_requirement_is_cited_by_a_test() -> None:
    """By a test or a test backend, without the registry of checks: a check alone is not a
    test of the check."""
    assert spec_ids() - cited(ROOT / "tests") == set()


def test_no_code_or_test_cites_an_unknown_id() -> None:
    ids = spec_ids()
    everywhere = set().union(*(cited(ROOT / folder) for folder in
                               ("tests", "zeros_ref", "backends", "conformance", "zeros_bench")))
    prefixes = {token for token in everywhere if any(i.startswith(f"{token}-") for i in ids)}
    assert everywhere - ids - prefixes - NOT_IDS == set(), "IDs the spec does not define"


def test_every_requirement_has_a_mutant_that_fails_it() -> None:
    """The table of tests/test_mutants.py, read as data: each ID's check is shown to fail."""
    assert uncovered(spec_ids(), MUTANTS) == set()
    assert {m.requirement for m in MUTANTS} <= spec_ids(), "mutants of unknown requirements"


def test_the_mutant_coverage_reports_exactly_what_is_missing() -> None:
    """Of the IDs the table covers, a made-up one more, or the table less a row, is
    reported: the coverage test above can fail."""
    covered = spec_ids() & {m.requirement for m in MUTANTS}
    assert uncovered(covered, MUTANTS) == set()
    assert uncovered(covered | {"ZS-MADE-UP"}, MUTANTS) == {"ZS-MADE-UP"}
    single = [m for m in MUTANTS if m.requirement == "ZS-API-KEYWORDS"]
    assert len(single) == 1
    assert uncovered(covered, [m for m in MUTANTS if m not in single]) == {"ZS-API-KEYWORDS"}


def test_features_are_known() -> None:
    assert {r.feature for r in load_requirements()} <= {"core"} | FEATURES


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
