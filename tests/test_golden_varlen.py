"""The packed golden set `zeros_conformance.golden_varlen` (spec 5.2, 11, 13; ZS-VARLEN-EQUAL,
ZS-LAYER-VARLEN).

Integrity: the manifest's SHA-256 hashes match the shipped files, and an edited, missing or
unlisted file is detected and named. Reproducibility: regenerating reproduces the shipped
outputs to rounding and gives byte-identical files on one machine. Agreement: every packed
output agrees, within 1e-12 of each sequence's row scale (spec 7.1), with the independent
mpmath evaluation (`mp_definition`) called on each sequence's slice alone, never on the
packed row; the scale of a default-logit case comes from mpmath's own default logits of the
slice. Coverage: asserted on the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from itertools import pairwise
from pathlib import Path
from typing import Any

import mp_definition as mpd
import numpy as np
import pytest

import zeros_ref
from zeros_conformance import cli, compare, golden_varlen, output_scale
from zeros_conformance.golden_varlen import MANIFEST_NAME, IntegrityError

GOLDEN_DIR = golden_varlen.default_directory()
MANIFEST: dict[str, Any] = json.loads((GOLDEN_DIR / MANIFEST_NAME).read_text())
ENTRIES: list[dict[str, Any]] = MANIFEST["cases"]
CASE_NAMES = [entry["name"] for entry in ENTRIES]
ATTENTION = [entry for entry in ENTRIES if entry["kind"] == "attention"]
LAYERS = [entry for entry in ENTRIES if entry["kind"] == "layer"]
REFERENCE_TOLERANCE = 1e-12
"""Agreement of the stored outputs with the mpmath definition, and of a regeneration with the
shipped outputs (spec 7.1)."""

Case = golden_varlen.PackedCase | golden_varlen.PackedLayerCase


def _assert_close(out: np.ndarray, ref: np.ndarray, scale: np.ndarray, what: str) -> None:
    result = compare(out, ref, scale, REFERENCE_TOLERANCE)
    assert result.passed, f"{what}: {result.describe()}"


def layer_scale(out: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The layer's error scale (ZS-LAYER-REFERENCE): the largest magnitude of the row of
    `out`, or of the output bias."""
    return np.maximum(np.max(np.abs(out), axis=-1), np.max(np.abs(params["bo"])))


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    """The shipped cases by name (loaded with verification)."""
    return {case.name: case for case in golden_varlen.load()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent regenerations of the packed set into fresh directories."""
    first = tmp_path_factory.mktemp("varlen_a")
    second = tmp_path_factory.mktemp("varlen_b")
    golden_varlen.regenerate(first)
    golden_varlen.regenerate(second)
    return first, second


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped packed golden directory."""
    return Path(shutil.copytree(GOLDEN_DIR, tmp_path / "golden_varlen"))


# --- Integrity ---------------------------------------------------------------------------------


def test_manifest_header() -> None:
    assert MANIFEST["format"] == golden_varlen.FORMAT == 1
    assert MANIFEST["spec_version"] == zeros_ref.SPEC_VERSION
    assert CASE_NAMES == [spec.name for spec in golden_varlen.CASES]
    assert len(set(CASE_NAMES)) == len(CASE_NAMES)
    assert {entry["kind"] for entry in ENTRIES} == set(golden_varlen.KINDS)


def test_manifest_hashes_match_files() -> None:
    for entry in ENTRIES:
        data = (GOLDEN_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
    assert golden_varlen.verify() == []
    assert cli.main(["golden", "verify", "--set", "varlen"]) == 0


def test_directory_holds_exactly_the_listed_files() -> None:
    listed = {entry["file"] for entry in ENTRIES} | {MANIFEST_NAME}
    assert {path.name for path in GOLDEN_DIR.iterdir()} == listed


def test_packed_data_is_small() -> None:
    size = sum(path.stat().st_size for path in GOLDEN_DIR.iterdir())
    assert size < 2**20, f"packed golden set holds {size} bytes"


def test_edited_byte_is_detected(copy: Path) -> None:
    name = ENTRIES[len(ENTRIES) // 2]["file"]
    path = copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = golden_varlen.verify(copy)
    assert len(problems) == 1 and name in problems[0] and "SHA-256" in problems[0]
    with pytest.raises(IntegrityError, match=re.escape(name)):
        golden_varlen.load(copy)
    assert cli.main(["golden", "verify", "--set", "varlen", "--dir", str(copy)]) == 1


def test_missing_file_is_detected(copy: Path) -> None:
    name = LAYERS[0]["file"]
    (copy / name).unlink()
    problems = golden_varlen.verify(copy)
    assert len(problems) == 1 and name in problems[0] and "missing" in problems[0]
    with pytest.raises(IntegrityError, match=re.escape(name)):
        golden_varlen.load(copy)


def test_unlisted_file_is_detected(copy: Path) -> None:
    shutil.copyfile(copy / ENTRIES[0]["file"], copy / "extra_case.npz")
    problems = golden_varlen.verify(copy)
    assert len(problems) == 1 and "extra_case.npz" in problems[0]
    assert "not listed" in problems[0]
    with pytest.raises(IntegrityError, match=re.escape("extra_case.npz")):
        golden_varlen.load(copy)


def test_missing_manifest_is_detected(copy: Path) -> None:
    (copy / MANIFEST_NAME).unlink()
    assert MANIFEST_NAME in golden_varlen.verify(copy)[0]
    with pytest.raises(IntegrityError, match=re.escape(MANIFEST_NAME)):
        golden_varlen.load(copy)


# --- Loading -----------------------------------------------------------------------------------


def test_loaded_cases_match_manifest(cases: dict[str, Case]) -> None:
    assert list(cases) == CASE_NAMES
    assert [c.name for c in golden_varlen.attention_cases()] == [e["name"] for e in ATTENTION]
    assert [c.name for c in golden_varlen.layer_cases()] == [e["name"] for e in LAYERS]
    for entry in ENTRIES:
        case, shape = cases[entry["name"]], entry["shape"]
        offsets = np.concatenate([[0], np.cumsum(entry["lengths"])])
        assert case.cu_seqlens.dtype == np.int64, case.name
        np.testing.assert_array_equal(case.cu_seqlens, offsets, err_msg=case.name)
        batch, t = tuple(shape["batch"]), shape["T"]
        if isinstance(case, golden_varlen.PackedLayerCase):
            assert case.x.shape == case.expected.shape == (*batch, t, shape["Dm"]), case.name
            assert case.options["causal"] is entry["causal"], case.name
            continue
        assert case.causal is entry["causal"], case.name
        assert case.inputs["q"].shape == (*batch, t, shape["D"]), case.name
        assert case.expected.shape == (*batch, t, shape["Dv"]), case.name
        assert ("logits" in case.inputs) == (entry["logits"] == "explicit"), case.name


# --- Reproducibility ---------------------------------------------------------------------------


def _scale(case: Case) -> np.ndarray:
    """The reference's own row scale of a case: per sequence (attention) or per row (layer)."""
    if isinstance(case, golden_varlen.PackedLayerCase):
        return layer_scale(case.expected, case.params)
    return case.output_scale()


@pytest.mark.req("ZS-VARLEN-EQUAL")
def test_regeneration_reproduces_shipped_outputs(regenerated: tuple[Path, Path],
                                                 cases: dict[str, Case]) -> None:
    fresh = {case.name: case for case in golden_varlen.load(regenerated[0])}
    assert list(fresh) == list(cases)
    for name, shipped in cases.items():
        new = fresh[name]
        np.testing.assert_array_equal(new.cu_seqlens, shipped.cu_seqlens, err_msg=name)
        if isinstance(shipped, golden_varlen.PackedLayerCase):
            assert isinstance(new, golden_varlen.PackedLayerCase)
            assert new.options == shipped.options, name
            stored_inputs = {"x": shipped.x, **shipped.params}
            fresh_inputs = {"x": new.x, **new.params}
        else:
            assert isinstance(new, golden_varlen.PackedCase)
            assert new.causal == shipped.causal, name
            stored_inputs, fresh_inputs = shipped.inputs, new.inputs
        assert sorted(fresh_inputs) == sorted(stored_inputs), name
        for key, value in stored_inputs.items():
            np.testing.assert_array_equal(fresh_inputs[key], value, err_msg=f"{name}: {key}")
        _assert_close(new.expected, shipped.expected, _scale(shipped),
                      f"{name}: regenerated vs shipped")


def test_regeneration_is_byte_identical(regenerated: tuple[Path, Path]) -> None:
    first, second = regenerated
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_regenerate_removes_stale_case_files(tmp_path: Path) -> None:
    (tmp_path / "old_case.npz").write_bytes(b"stale")
    assert cli.main(["golden", "regenerate", "--set", "varlen", "--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "old_case.npz").exists()
    assert golden_varlen.verify(tmp_path) == []


# --- Agreement with the independent definition, slice by slice ---------------------------------


def _spans(case: Case) -> list[tuple[int, int]]:
    """(first token, end) of every non-empty sequence."""
    return [(a, b) for a, b in pairwise(int(o) for o in case.cu_seqlens) if b > a]


def _attention_by_slices(case: golden_varlen.PackedCase) -> tuple[np.ndarray, np.ndarray]:
    """mpmath's output of every sequence alone, and each sequence's row scale of spec 7.1
    from mpmath's logits (its own default logits where the case has none), (*B, T, Dv) and
    (*B, T)."""
    exact = np.zeros_like(case.expected)
    scale = np.zeros(case.expected.shape[:-1])
    for a, b in _spans(case):
        one = case.sequence(a, b)
        exact[..., a:b, :] = mpd.attention(**one, causal=case.causal)
        logits = one.get("logits")
        if logits is None:
            logits = mpd.deviation_logits(one["k"], causal=case.causal)
        gates = [np.asarray(one[gate]) for gate in ("first", "higher", "zero")]
        scale[..., a:b] = output_scale(one["v"], logits, *gates, causal=case.causal)
    return exact, scale


@pytest.mark.req("ZS-VARLEN-EQUAL")
@pytest.mark.parametrize("name", [entry["name"] for entry in ATTENTION])
def test_packed_attention_agrees_with_mpmath_on_each_slice(
    name: str, cases: dict[str, Case]
) -> None:
    case = cases[name]
    assert isinstance(case, golden_varlen.PackedCase)
    assert np.all(np.isfinite(case.expected)), name
    exact, scale = _attention_by_slices(case)
    _assert_close(case.expected, exact, scale, f"{name} ({case.description}) vs mpmath")


@pytest.mark.req("ZS-LAYER-VARLEN")
@pytest.mark.parametrize("name", [entry["name"] for entry in LAYERS])
def test_packed_layer_agrees_with_mpmath_on_each_slice(name: str,
                                                       cases: dict[str, Case]) -> None:
    case = cases[name]
    assert isinstance(case, golden_varlen.PackedLayerCase)
    exact = np.zeros_like(case.expected)
    for a, b in _spans(case):
        exact[..., a:b, :] = mpd.layer(case.x[..., a:b, :], case.params, **case.options)
    _assert_close(case.expected, exact, layer_scale(exact, case.params),
                  f"{name} ({case.description}) vs mpmath")


# --- Coverage ----------------------------------------------------------------------------------


def test_covers_empty_sequences_and_awkward_lengths() -> None:
    lengths = [entry["lengths"] for entry in ENTRIES]
    assert any(ls[0] == 0 for ls in lengths), "an empty first sequence"
    assert any(ls[-1] == 0 for ls in lengths), "an empty last sequence"
    assert any(0 in ls[1:-1] for ls in lengths), "an empty sequence in the middle"
    assert {n for ls in lengths for n in ls} >= {0, 1, 15, 16, 17, 63, 64, 65}
    many_short = [ls for ls in lengths if sum(n <= 6 for n in ls) >= 20 and max(ls) >= 64]
    assert many_short, "many short sequences beside one long one"


def test_covers_modes_logits_gates_and_leading_axes() -> None:
    combos = {(entry["causal"], entry["logits"]) for entry in ATTENTION}
    assert combos == {(True, "explicit"), (True, "default"), (False, "explicit"),
                      (False, "default")}
    assert {entry["causal"] for entry in ATTENTION if entry["gates"] == "random"} == {True, False}
    batches = {tuple(entry["shape"]["batch"]) for entry in ATTENTION}
    assert {(2,), (2, 3)} <= batches
    shifts = [entry["shifted_sequence"] for entry in ATTENTION if entry["shifted_sequence"]]
    assert {np.sign(amount) for _, amount in shifts} == {1.0, -1.0}
    assert all(abs(amount) >= 1e4 for _, amount in shifts)
    assert 8 <= len(ATTENTION) <= 12


def test_covers_packed_layers() -> None:
    assert 2 <= len(LAYERS) <= 3
    assert {entry["causal"] for entry in LAYERS} == {True, False}
    assert all(entry["rope"] in ("half", "interleaved") for entry in LAYERS)
    assert any(0 in entry["lengths"] for entry in LAYERS)
