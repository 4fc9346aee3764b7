"""The versioned golden set `zeros_conformance.golden` (spec section 11, ZS-ACC-GOLDEN).

Integrity: the manifest's SHA-256 hashes match the shipped files, and an edited, missing or
unlisted file is detected and named. Reproducibility: regenerating reproduces the shipped
outputs to rounding and gives byte-identical files on one machine. Agreement: every golden
output agrees, within 1e-12 of its row's output scale (spec 7.1), with the independent mpmath
evaluation of sections 2 and 3 (`mp_definition`) on the golden inputs. That evaluation forms
its own unit vectors and default logits and never imports `zeros_ref`, and the scale is taken
from its logits, so no helper of the reference decides the answer; the cross-check against
`zeros_ref.explicit_attention` at generation shares those helpers with `zeros_ref.attention`
and passes a mistake common to both (such as a miscounted default logit). The reference also
reproduces the stored outputs within the float64 tolerance. Coverage: asserted on the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import mp_definition as mpd
import numpy as np
import pytest

import zeros_ref
from zeros_conformance import TOLERANCE, cli, compare, golden, output_scale

GOLDEN_DIR = golden.default_directory()
MANIFEST: dict[str, Any] = json.loads((GOLDEN_DIR / golden.MANIFEST_NAME).read_text())
ENTRIES: list[dict[str, Any]] = MANIFEST["cases"]
CASE_NAMES = [entry["name"] for entry in ENTRIES]
REFERENCE_TOLERANCE = 1e-12
"""Agreement of the golden outputs with the mpmath definition, and of a regeneration with the
shipped outputs (spec 7.1: the reference agrees with an arbitrary-precision evaluation to
1e-12)."""


def _assert_close(out: np.ndarray, ref: np.ndarray, scale: np.ndarray, tol: float,
                  what: str) -> None:
    result = compare(out, ref, scale, tol)
    assert result.passed, f"{what}: {result.describe()}"


@pytest.fixture(scope="module")
def cases() -> dict[str, golden.GoldenCase]:
    """The shipped golden cases by name (loaded with verification)."""
    return {case.name: case for case in golden.load()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent regenerations of the golden set into fresh directories."""
    first = tmp_path_factory.mktemp("golden_a")
    second = tmp_path_factory.mktemp("golden_b")
    golden.regenerate(first)
    golden.regenerate(second)
    return first, second


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped golden directory."""
    return Path(shutil.copytree(GOLDEN_DIR, tmp_path / "golden"))


# --- Integrity ---------------------------------------------------------------------------------


def test_manifest_header() -> None:
    assert MANIFEST["format"] == golden.FORMAT == 1
    assert MANIFEST["golden_version"] == golden.GOLDEN_VERSION
    assert MANIFEST["spec_version"] == zeros_ref.SPEC_VERSION
    assert MANIFEST["generator"] == f"zeros_ref {zeros_ref.__version__}"
    assert CASE_NAMES == [spec.name for spec in golden.CASES]
    assert len(set(CASE_NAMES)) == len(CASE_NAMES)


def test_manifest_hashes_match_files() -> None:
    for entry in ENTRIES:
        data = (GOLDEN_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
    assert golden.verify() == []
    assert cli.main(["golden", "verify"]) == 0


def test_directory_holds_exactly_the_listed_files() -> None:
    listed = {entry["file"] for entry in ENTRIES} | {golden.MANIFEST_NAME}
    assert {path.name for path in GOLDEN_DIR.iterdir()} == listed


def test_golden_data_is_small() -> None:
    size = sum(path.stat().st_size for path in GOLDEN_DIR.iterdir())
    assert size < 2 * 2**20, f"golden set holds {size} bytes"


def test_edited_byte_is_detected(copy: Path) -> None:
    name = ENTRIES[len(ENTRIES) // 2]["file"]
    path = copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = golden.verify(copy)
    assert len(problems) == 1 and name in problems[0] and "SHA-256" in problems[0]
    with pytest.raises(golden.GoldenIntegrityError, match=re.escape(name)):
        golden.load(copy)
    assert cli.main(["golden", "verify", "--set", "attention", "--dir", str(copy)]) == 1


def test_missing_file_is_detected(copy: Path) -> None:
    name = ENTRIES[0]["file"]
    (copy / name).unlink()
    problems = golden.verify(copy)
    assert len(problems) == 1 and name in problems[0] and "missing" in problems[0]
    with pytest.raises(golden.GoldenIntegrityError, match=re.escape(name)):
        golden.load(copy)


def test_unlisted_file_is_detected(copy: Path) -> None:
    shutil.copyfile(copy / ENTRIES[0]["file"], copy / "extra_case.npz")
    problems = golden.verify(copy)
    assert len(problems) == 1 and "extra_case.npz" in problems[0]
    assert "not listed" in problems[0]
    with pytest.raises(golden.GoldenIntegrityError, match=re.escape("extra_case.npz")):
        golden.load(copy)


def test_missing_manifest_is_detected(copy: Path) -> None:
    (copy / golden.MANIFEST_NAME).unlink()
    assert golden.MANIFEST_NAME in golden.verify(copy)[0]
    with pytest.raises(golden.GoldenIntegrityError, match=re.escape(golden.MANIFEST_NAME)):
        golden.load(copy)


def test_integrity_error_is_a_value_error() -> None:
    assert issubclass(golden.GoldenIntegrityError, ValueError)


# --- Loading -----------------------------------------------------------------------------------


def test_loaded_cases_match_manifest(cases: dict[str, golden.GoldenCase]) -> None:
    assert list(cases) == CASE_NAMES
    for entry in ENTRIES:
        case, shape = cases[entry["name"]], entry["shape"]
        batch, n, d, dv = tuple(shape["batch"]), shape["N"], shape["D"], shape["Dv"]
        assert case.causal is entry["causal"], case.name
        assert case.inputs["q"].shape == case.inputs["k"].shape == (*batch, n, d), case.name
        assert case.inputs["v"].shape == case.expected.shape == (*batch, n, dv), case.name
        assert ("logits" in case.inputs) == (entry["logits"] != "default"), case.name
        for gate in ("first", "higher", "zero"):
            value = case.inputs[gate]
            if entry["gates"] == "random":
                assert value.shape == (*batch, n), (case.name, gate)
            else:
                assert isinstance(value, float), (case.name, gate)


# --- Reproducibility ---------------------------------------------------------------------------


@pytest.mark.req("ZS-ACC-GOLDEN")
def test_regeneration_reproduces_shipped_outputs(
    regenerated: tuple[Path, Path], cases: dict[str, golden.GoldenCase]
) -> None:
    fresh = {case.name: case for case in golden.load(regenerated[0])}
    assert list(fresh) == list(cases)
    for name, shipped in cases.items():
        new = fresh[name]
        assert new.causal == shipped.causal, name
        assert sorted(new.inputs) == sorted(shipped.inputs), name
        for key, value in shipped.inputs.items():
            np.testing.assert_array_equal(new.inputs[key], value, err_msg=f"{name}: {key}")
        _assert_close(new.expected, shipped.expected, shipped.output_scale(),
                      REFERENCE_TOLERANCE, f"{name}: regenerated vs shipped")


def test_regeneration_is_byte_identical(regenerated: tuple[Path, Path]) -> None:
    first, second = regenerated
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_regenerate_removes_stale_case_files(tmp_path: Path) -> None:
    (tmp_path / "old_case.npz").write_bytes(b"stale")
    assert cli.main(["golden", "regenerate", "--set", "attention", "--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "old_case.npz").exists()
    assert golden.verify(tmp_path) == []


# --- Agreement ---------------------------------------------------------------------------------


def definition_scale(case: golden.GoldenCase) -> np.ndarray:
    """Output scale of spec 7.1 of every row, (*B, N), from the logits of the mpmath definition:
    the explicit ones, or its own default logits (ZS-LOG-DEFAULT), not `case.logits()`, which
    are `zeros_ref`'s."""
    logits = case.inputs.get("logits")
    if logits is None:
        logits = mpd.deviation_logits(case.inputs["k"], causal=case.causal)
    gates = [np.asarray(case.inputs[gate]) for gate in ("first", "higher", "zero")]
    return output_scale(case.inputs["v"], logits, *gates, causal=case.causal)


@pytest.mark.req("ZS-ACC-GOLDEN")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_golden_agrees_with_mpmath_definition(
    name: str, cases: dict[str, golden.GoldenCase]
) -> None:
    case = cases[name]
    exact = mpd.attention(**case.inputs, causal=case.causal)
    assert np.all(np.isfinite(case.expected)), name
    _assert_close(case.expected, exact, definition_scale(case), REFERENCE_TOLERANCE,
                  f"{name} ({case.description}) vs mpmath")


@pytest.mark.req("ZS-ACC-GOLDEN")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_reference_attention_agrees_with_golden(
    name: str, cases: dict[str, golden.GoldenCase]
) -> None:
    case = cases[name]
    out = zeros_ref.attention(**case.inputs, causal=case.causal)
    _assert_close(out, case.expected, case.output_scale(), TOLERANCE["float64"],
                  f"{name} ({case.description})")


# --- Coverage ----------------------------------------------------------------------------------


def _kinds(key: str, **where: Any) -> set[Any]:
    return {
        entry[key]
        for entry in ENTRIES
        if all(entry[name] == value for name, value in where.items())
    }


def test_covers_both_modes_and_every_logit_and_gate_kind() -> None:
    for causal in (True, False):
        assert _kinds("logits", causal=causal) >= {"default", "explicit", "wide", "offset",
                                                    "equal"}, causal
        assert _kinds("gates", causal=causal) >= {"default", "scalar", "random"}, causal
    assert "random" in _kinds("gates", logits="default")
    assert "random" in _kinds("gates", logits="wide")


def test_covers_degenerate_inputs_and_shapes() -> None:
    tags = {tag for entry in ENTRIES for tag in entry["degenerate"]}
    assert tags >= {"zero_q", "zero_k", "equal_logits", "N=1", "D=1", "Dv=1"}
    shapes = [entry["shape"] for entry in ENTRIES]
    assert {s["N"] for s in shapes} >= {1, 2, 17, 63, 64, 65, 200}
    assert any(len(s["batch"]) >= 2 for s in shapes)
    assert 20 <= len(ENTRIES) <= 30
