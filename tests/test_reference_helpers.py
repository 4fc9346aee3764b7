"""Helpers of the reference (spec 12): logit variants, RoPE, the public namespace, doctests."""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import pkgutil
import re
from pathlib import Path
from typing import Any

import mp_definition as mpd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zeros_ref

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "zeros-spec.md"


# -- logit variants (spec 12.1) ------------------------------------------------------------------


@pytest.mark.req("ZS-LOG-DEFAULT")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("mu", ["zero", "scalar", "vector", "batched"])
def test_deviation_logits_match_a_direct_loop(
    rng: np.random.Generator, mu: str, tau: float, causal: bool
) -> None:
    u = rng.normal(size=(2, 9, 5))
    mu_value: Any = {
        "zero": 0.0,
        "scalar": 0.7,
        "vector": rng.normal(size=5),
        "batched": rng.normal(size=(2, 5)),
    }[mu]
    s = zeros_ref.deviation_logits(u, mu=mu_value, tau=tau, causal=causal)
    ref = mpd.deviation_logits(u, mu=mu_value, tau=tau, causal=causal)
    assert s.shape == (2, 9) and s.dtype == u.dtype
    np.testing.assert_allclose(s, ref, rtol=1e-13, atol=1e-14)


def test_deviation_logits_first_causal_entry_by_hand() -> None:
    """s_1 = -<u_1, (tau mu + u_1) / (tau + 1)> / sqrt(D), written out for one case."""
    u = np.array([[3.0, 4.0], [1.0, -2.0]])
    s = zeros_ref.deviation_logits(u, mu=np.array([1.0, 0.0]), tau=2.0)
    ubar1 = (2.0 * np.array([1.0, 0.0]) + u[0]) / 3.0
    ubar2 = (2.0 * np.array([1.0, 0.0]) + u[0] + u[1]) / 4.0
    np.testing.assert_allclose(s, [-(u[0] @ ubar1), -(u[1] @ ubar2)] / np.sqrt(2.0), rtol=1e-15)


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_deviation_logits_reject_bad_tau(tau: float) -> None:
    with pytest.raises(ValueError, match="`tau`"):
        zeros_ref.deviation_logits(np.ones((3, 2)), tau=tau)


@pytest.mark.parametrize("f", [zeros_ref.deviation_logits, zeros_ref.quadratic_logits,
                               zeros_ref.mean_logits])
def test_logit_helpers_validate_u(f: Any) -> None:
    with pytest.raises(TypeError, match="`u`"):
        f(np.ones((3, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="`u`"):
        f([[1.0, 2.0]])
    with pytest.raises(ValueError, match="`u`"):
        f(np.ones(3))


def test_quadratic_and_mean_logits_match_a_direct_loop(rng: np.random.Generator) -> None:
    u = rng.normal(size=(3, 7, 6))
    quadratic = np.empty((3, 7))
    mean = np.empty((3, 7))
    for b in range(3):
        for i in range(7):
            quadratic[b, i] = sum(x * x for x in u[b, i]) / 6
            mean[b, i] = sum(u[b, i]) / 6
    np.testing.assert_allclose(zeros_ref.quadratic_logits(u), quadratic, rtol=1e-14)
    np.testing.assert_allclose(zeros_ref.mean_logits(u), mean, rtol=1e-13, atol=1e-15)


# -- RoPE (spec 12.2) -----------------------------------------------------------------------------

LAYOUTS = ("half", "interleaved")


def mixed_rope(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """The mistake of public code: interleaved angles (each angle repeated for coordinates 2j,
    2j + 1) applied with the half-split pairing (rotate_half). Not a rotation."""
    n, d = x.shape[-2], x.shape[-1]
    freq = base ** (-np.arange(d // 2) * 2.0 / d)
    angle = np.repeat(np.arange(n)[:, None] * freq[None, :], 2, axis=-1)  # (N, D) interleaved
    rotated_half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * np.cos(angle) + rotated_half * np.sin(angle)


def norms_kept(f: Any, x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(f(x), axis=-1), np.linalg.norm(x, axis=-1),
                            rtol=1e-12, atol=0))


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(deadline=None, max_examples=20)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    half=st.integers(1, 8),
    offset=st.integers(0, 10**5),
    base=st.sampled_from([10.0, 500.0, 10000.0]),
)
def test_rope_keeps_norms(layout: str, seed: int, n: int, half: int, offset: int,
                          base: float) -> None:
    x = np.random.default_rng(seed).normal(size=(2, n, 2 * half))
    assert norms_kept(lambda y: zeros_ref.rope(y, offset=offset, base=base, layout=layout), x)


def test_mixed_layouts_are_not_a_rotation(rng: np.random.Generator) -> None:
    """The norm check above catches the mixed layout, and the mixed layout is neither layout."""
    x = rng.normal(size=(2, 16, 8))
    assert not norms_kept(mixed_rope, x)
    for layout in LAYOUTS:
        assert not np.allclose(mixed_rope(x), zeros_ref.rope(x, layout=layout))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_is_relative(rng: np.random.Generator, layout: str) -> None:
    """<rope(q, offset=a)_t, rope(k, offset=a)_i> does not depend on a."""
    q, k = rng.normal(size=(2, 12, 8))
    gram = [zeros_ref.rope(q, offset=a, layout=layout)
            @ zeros_ref.rope(k, offset=a, layout=layout).T for a in (0, 7, 1000)]
    for other in gram[1:]:
        np.testing.assert_allclose(other, gram[0], rtol=0, atol=1e-9)
    # The same vector at every position: the Gram matrix depends on t - i only (Toeplitz).
    x = np.broadcast_to(q[0], (12, 8))
    g = zeros_ref.rope(x, layout=layout) @ zeros_ref.rope(x, layout=layout).T
    for lag in range(-11, 12):
        diagonal = np.diagonal(g, offset=lag)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=0, atol=1e-12)
    # The mixed layout is not relative.
    m = mixed_rope(x) @ mixed_rope(x).T
    assert not np.allclose(np.diagonal(m, offset=1), np.diagonal(m, offset=1)[0], atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_pairs_and_angles(layout: str) -> None:
    """Basis vector j at position p turns by p * base**(-2j/D) within its layout's pair."""
    d, base, position = 8, 100.0, 5
    for j in range(d // 2):
        first, second = (j, j + d // 2) if layout == "half" else (2 * j, 2 * j + 1)
        e = np.zeros((position + 1, d))
        e[:, first] = 1.0
        rotated = zeros_ref.rope(e, base=base, layout=layout)[position]
        angle = position * base ** (-2.0 * j / d)
        expected = np.zeros(d)
        expected[first], expected[second] = np.cos(angle), np.sin(angle)
        np.testing.assert_allclose(rotated, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_offset_continues_the_sequence(rng: np.random.Generator, layout: str) -> None:
    x = rng.normal(size=(3, 20, 6))
    whole = zeros_ref.rope(x, layout=layout)
    np.testing.assert_allclose(zeros_ref.rope(x[:, 13:], offset=13, layout=layout),
                               whole[:, 13:], rtol=0, atol=1e-13)


def test_rope_errors() -> None:
    with pytest.raises(ValueError, match="`x`"):
        zeros_ref.rope(np.ones((4, 5)))
    with pytest.raises(ValueError, match="`x`"):
        zeros_ref.rope(np.ones(4))
    with pytest.raises(TypeError, match="`x`"):
        zeros_ref.rope(np.ones((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="`layout`"):
        zeros_ref.rope(np.ones((4, 4)), layout="neox")


# -- the public namespace -------------------------------------------------------------------------

PUBLIC = {
    "DEFAULT_CHUNK_SIZE", "SPEC_VERSION", "State", "__version__", "attention",
    "explicit_attention", "weights", "deviation_logits", "quadratic_logits", "mean_logits",
    "rope", "kernel", "layer", "LayerState", "PARAMETERS", "random_layer_params",
    "merge_states",
}

KERNEL = {
    "DEFAULT_CHUNK_SIZE", "Inputs", "State", "causal_step", "check_call", "check_default_logits",
    "check_inputs", "deviation_logits", "host_offsets", "running_mean_logits", "unit",
    "merge_states", "append", "read_whole",
}


def test_public_names() -> None:
    assert len(zeros_ref.__all__) == len(set(zeros_ref.__all__))
    assert set(zeros_ref.__all__) == PUBLIC
    namespace: dict[str, Any] = {}
    exec("from zeros_ref import *", namespace)
    assert PUBLIC - {"__version__"} <= set(namespace)
    for name in PUBLIC:
        assert getattr(zeros_ref, name) is not None
    assert isinstance(zeros_ref.DEFAULT_CHUNK_SIZE, int) and zeros_ref.DEFAULT_CHUNK_SIZE >= 1


def test_kernel_api_is_pinned_and_documented() -> None:
    from zeros_ref import kernel

    assert set(kernel.__all__) == KERNEL and len(kernel.__all__) == len(KERNEL)
    for name in KERNEL - {"DEFAULT_CHUNK_SIZE"}:
        assert getattr(kernel, name).__doc__, name
    assert (kernel.State.F, kernel.State.G, kernel.State.H) == (0, 1, 2)


def test_state_rows_and_merge_are_inverse(rng: np.random.Generator) -> None:
    from zeros_ref.kernel import State

    q, k, v = rng.normal(size=(3, 5, 9, 4))
    _, state = zeros_ref.attention(q, k, v, return_state=True)
    split = [np.array([3, 0]), np.array([4]), np.array([1, 2])]
    parts = [(index, state.rows(index)) for index in split]
    assert parts[0][1].kv.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(parts[0][1].running_max, state.running_max[[3, 0]])
    merged = State.merge(parts)
    for name in ("running_max", "mean_offset", "normaliser", "kv", "key_sum"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(state, name), name)
    assert merged.length == state.length == 9
    view = state.rows(slice(1, 3))  # a slice gives views, an index array copies
    assert np.shares_memory(view.kv, state.kv) and view.key_sum.shape == (2, 4)
    assert not np.shares_memory(parts[0][1].kv, state.kv)


def test_versions() -> None:
    stated = re.search(r"^Spec version (\d+(?:\.\d+)*)\.", SPEC.read_text(), re.MULTILINE)
    assert stated and stated.group(1) == zeros_ref.SPEC_VERSION
    assert importlib.metadata.version("zeros-attention-spec") == zeros_ref.__version__


def _modules() -> list[Any]:
    names = [m.name for m in pkgutil.iter_modules(zeros_ref.__path__, "zeros_ref.")]
    return [zeros_ref] + [importlib.import_module(name) for name in sorted(names)]


def test_docstring_examples_pass() -> None:
    attempted = 0
    for module in _modules():
        failed, tried = doctest.testmod(module, verbose=False, report=True,
                                        optionflags=doctest.NORMALIZE_WHITESPACE)
        assert failed == 0, f"{module.__name__}: {failed} failing example(s)"
        attempted += tried
    assert attempted >= 4  # attention, weights, deviation_logits, rope


def test_public_functions_have_docstrings() -> None:
    for name in PUBLIC:
        obj = getattr(zeros_ref, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name


def test_cited_requirement_ids_exist() -> None:
    """Every ZS-... ID cited in zeros_ref names a requirement of the spec (wildcards allowed)."""
    known = set(re.findall(r"^#### (ZS-[A-Z0-9-]+)", SPEC.read_text(), re.MULTILINE))
    assert known
    for path in sorted((ROOT / "zeros_ref").glob("*.py")):
        for cited in re.findall(r"ZS-[A-Z0-9-]*[A-Z0-9*]", path.read_text()):
            if cited.endswith("*"):
                assert any(k.startswith(cited[:-1]) for k in known), f"{path.name}: {cited}"
            else:
                assert cited in known, f"{path.name} cites unknown {cited}"
