"""Every requirement's check can fail: the table of deliberately broken backends (mutants,
in tests/backends/broken*.py) with the requirement IDs each must fail, and their correct
twins, which must pass those same checks.

Each row is run as ``zeros-conformance run --quick --only ID`` on the mutant and must end
with status ``failed`` and exit code 1 (0 for a SHOULD, whose failure does not fail the
run). No row expects ``error``: the checks of the requirements about raising (ZS-ERR-*,
ZS-API-*) catch what the backend raises or fails to raise and turn it into a failed
measurement, so ``error`` is left for checks that themselves break.

`tests/test_spec.py` reads `MUTANTS` as data: every ID of the spec must have a row.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

from zeros_conformance import cli, load_requirements

BACKENDS = Path(__file__).parent / "backends"
LEVELS = {r.id: r.level for r in load_requirements()}


class Mutant(NamedTuple):
    """One row: `mutant` (``module:attribute`` under tests/backends/) must fail
    `requirement`; `twin` (the same code without the mistake, ``module:attribute`` or a
    registered backend) passes it. No twin for the complexity mutants: the explicit
    definition is itself quadratic, and `test_a_mutant_of_complexity_passes_everything_else`
    runs theirs the other way round."""

    mutant: str
    requirement: str
    twin: str | None = "broken:quadratic"


MUTANTS: list[Mutant] = [
    # broken.py: the explicit definition with one mistake (or the reference, corrupted).
    Mutant("broken:first_order_from_probabilities", "ZS-DEF-WEIGHTS"),
    # It fails ZS-ACC-REFERENCE too, but that check's 2500-token cases take the explicit
    # definition 18 s: normalised_key_logits below stands for it at O(N) cost.
    Mutant("broken:global_max", "ZS-STAB-RANGE"),
    Mutant("broken:global_max", "ZS-STAB-OFFSET"),
    Mutant("broken:quadratic", "ZS-ON-TIME", None),
    Mutant("broken:quadratic", "ZS-ON-MEMORY", None),
    Mutant("broken:future_mean", "ZS-DEF-CAUSAL"),
    Mutant("broken:swapped_gates", "ZS-DEF-GATES"),
    Mutant("broken:ignored_gates", "ZS-DEF-GATES"),
    Mutant("broken:wrong_dtype", "ZS-DTYPE-OUTPUT"),
    Mutant("broken:nan_on_zero_vectors", "ZS-STAB-DEGENERATE"),
    Mutant("broken:nan_on_zero_vectors", "ZS-DEF-COSINE"),
    Mutant("broken:forgetful_state", "ZS-STREAM-PIECES", "reference"),
    Mutant("broken:forgetful_state", "ZS-STREAM-DECODE", "reference"),
    Mutant("broken:cumulative_sums", "ZS-ON-MEMORY", None),
    Mutant("broken:history_state", "ZS-ON-DECODE", None),
    Mutant("broken:history_state", "ZS-ON-STATE", None),
    Mutant("broken:spreads_v_nan", "ZS-ERR-NONFINITE-V", "reference"),  # a SHOULD: exit 0
    Mutant("broken:drops_zero_gate", "ZS-DEF-SOFTMAX"),
    Mutant("broken:drops_zero_gate", "ZS-DEF-ZEROSUM"),
    Mutant("broken:zero_order_leaks", "ZS-DEF-ZEROSUM"),
    Mutant("broken:zero_order_leaks", "ZS-DEF-SOFTMAX"),
    Mutant("broken:uncentred_first_order", "ZS-DEF-SHIFT"),
    Mutant("broken:uncentred_first_order", "ZS-DEF-ZEROSUM"),
    Mutant("broken:bidirectional_counts_t", "ZS-DEF-BIDIRECTIONAL"),
    Mutant("broken:bidirectional_counts_t", "ZS-DEF-WEIGHTS"),
    Mutant("broken:default_count_i", "ZS-LOG-DEFAULT"),
    Mutant("broken:default_count_i", "ZS-ACC-GOLDEN"),
    Mutant("broken:zero_keys_as_padding", "ZS-ACC-GOLDEN"),
    Mutant("broken:masks_with_product", "ZS-ERR-NONFINITE"),
    Mutant("broken:naive_norms", "ZS-STAB-MAGNITUDE"),
    # broken_api.py: the reference behind the protocol, one thing changed around it.
    Mutant("broken_api:misnamed_feature", "ZS-API-PROTOCOL", "broken_api:reference_twin"),
    Mutant("broken_api:bidirectional_by_default", "ZS-API-KEYWORDS",
           "broken_api:reference_twin"),
    Mutant("broken_api:answers_empty_d", "ZS-ERR-SHAPE", "broken_api:reference_twin"),
    Mutant("broken_api:coerces_gates", "ZS-ERR-DTYPE", "broken_api:reference_twin"),
    Mutant("broken_api:raises_on_empty", "ZS-ERR-EMPTY", "broken_api:reference_twin"),
    Mutant("broken_api:bidirectional_ignores_state", "ZS-ERR-STATE",
           "broken_api:reference_twin"),
    Mutant("broken_api:casts_state", "ZS-ERR-STATE", "broken_api:reference_twin"),
    Mutant("broken_api:normalised_key_logits", "ZS-ACC-REFERENCE", "broken_api:reference_twin"),
    Mutant("broken_api:normalised_key_logits", "ZS-LOG-DEFAULT", "broken_api:reference_twin"),
    Mutant("broken_api:restarts_every_8192", "ZS-STAB-LONG", "broken_api:reference_twin"),
    # broken_half.py: the explicit definition claiming float16, one dtype mistake.
    Mutant("broken_half:unstabilised_exp", "ZS-DTYPE-HALF", "broken_half:half_twin"),
    Mutant("broken_half:unstabilised_exp", "ZS-STAB-RANGE", "broken_half:half_twin"),
    Mutant("broken_half:unstabilised_exp", "ZS-STAB-OFFSET", "broken_half:half_twin"),
    Mutant("broken_half:unstabilised_exp", "ZS-DEF-SHIFT", "broken_half:half_twin"),
    Mutant("broken_half:half_accumulation", "ZS-DTYPE-HALF", "broken_half:half_twin"),
    # broken_grad.py: gradients by complex steps of the explicit definition.
    Mutant("broken_grad:detached_default_logits", "ZS-GRAD", "broken_grad:differentiable"),
    # broken_layer.py: the layer of spec 13.1, one knob per mistake.
    Mutant("broken_layer:authors_rope", "ZS-LAYER-ROPE", "broken_layer:layer"),
    Mutant("broken_layer:authors_rope", "ZS-LAYER-REFERENCE", "broken_layer:layer"),
    Mutant("broken_layer:count_tau_plus_i", "ZS-LAYER-REFERENCE", "broken_layer:layer"),
    Mutant("broken_layer:whole_sequence_mean", "ZS-LAYER-CAUSAL", "broken_layer:layer"),
    Mutant("broken_layer:whole_sequence_mean", "ZS-LAYER-REFERENCE", "broken_layer:layer"),
    Mutant("broken_layer:rope_restarts", "ZS-LAYER-STREAM", "broken_layer:streaming_layer"),
    # broken_varlen.py: packed sequences (spec 5.2).
    Mutant("broken_varlen:carried_max", "ZS-VARLEN-ISOLATION", "broken_varlen:packed_explicit"),
    Mutant("broken_varlen:carried_mean", "ZS-VARLEN-EQUAL", "broken_varlen:packed_explicit"),
    Mutant("broken_varlen:off_by_one", "ZS-VARLEN-EQUAL", "broken_varlen:packed_explicit"),
    Mutant("broken_varlen:unchecked_offsets", "ZS-ERR-VARLEN", "broken_varlen:packed_explicit"),
    Mutant("broken_varlen:mixed_states", "ZS-VARLEN-STATE", "reference"),
    Mutant("broken_varlen:pads_to_longest", "ZS-ON-VARLEN", "reference"),
    Mutant("broken_varlen:core_only_layer", "ZS-LAYER-VARLEN", "reference"),
    # broken_merge.py: the merge of states (spec 5.3).
    Mutant("broken_merge:unframed", "ZS-STREAM-MERGE", "reference"),
    Mutant("broken_merge:unmoved_g", "ZS-STREAM-MERGE", "reference"),
]
"""(mutant, requirement it must fail, its correct twin), one row per pair."""


def target(name: str) -> str:
    """The ``--backend`` argument of a table entry: a file under tests/backends/ or a
    registered backend."""
    if ":" not in name:
        return name
    module, attribute = name.split(":")
    return f"{BACKENDS / module}.py:{attribute}"


def run(tmp_path: Path, backend: str, *requirements: str) -> tuple[int, dict[str, dict]]:
    """``zeros-conformance run --quick --only ID ...``: the exit code and outcome per ID."""
    report = tmp_path / "report.json"
    only = [arg for r in requirements for arg in ("--only", r)]
    code = cli.main(["run", "--backend", target(backend), "--quick", "--report", str(report),
                     *only])
    return code, {r["id"]: r for r in json.loads(report.read_text())["requirements"]}


@pytest.mark.parametrize(("mutant", "requirement"),
                         [(m.mutant, m.requirement) for m in MUTANTS],
                         ids=[f"{m.mutant}-{m.requirement}" for m in MUTANTS])
def test_each_mutant_fails_its_requirement(tmp_path: Path, mutant: str, requirement: str) -> None:
    code, outcomes = run(tmp_path, mutant, requirement)
    entry = outcomes[requirement]
    assert entry["status"] == "failed", entry
    assert code == (1 if LEVELS[requirement] == "MUST" else 0)
    assert entry["failure"]["case"], "a failure must carry the case that reproduces it"


def _twins() -> dict[str, list[str]]:
    wanted: dict[str, list[str]] = defaultdict(list)
    for m in MUTANTS:
        if m.twin is not None and m.requirement not in wanted[m.twin]:
            wanted[m.twin].append(m.requirement)
    return dict(wanted)


@pytest.mark.parametrize(("twin", "requirements"), sorted(_twins().items()),
                         ids=sorted(_twins()))
def test_the_correct_twin_of_each_mutant_passes_the_same_checks(
    tmp_path: Path, twin: str, requirements: list[str]
) -> None:
    """Each twin is its mutants' code without the mistake: it passes every check they fail,
    so each failure comes from the planted mistake."""
    code, outcomes = run(tmp_path, twin, *requirements)
    assert {i: e["status"] for i, e in outcomes.items()} == dict.fromkeys(requirements, "passed")
    assert code == 0
