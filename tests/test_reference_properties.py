"""Black-box properties of the definition, checked on the reference (spec section 2).

Each property holds in exact arithmetic; in float64 the two sides may differ by rounding only,
measured as in spec 7.1 relative to the output scale (`conftest.assert_close`).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case, assert_close, definition_scale, draw_case
from hypothesis import given, settings
from hypothesis import strategies as st

import zeros_ref

ROUNDING = 1e-12


@pytest.mark.req("ZS-DEF-SHIFT")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shift", [-1e4, -37.25, 1e-3, 512.0, 1e4])
def test_shift_invariance(rng: np.random.Generator, causal: bool, shift: float) -> None:
    case = draw_case(rng, 70, batch=(2,), logit_scale=3.0)
    base = zeros_ref.attention(case.q, case.k, case.v, causal=causal, chunk_size=16,
                               **case.kwargs)
    shifted = zeros_ref.attention(
        case.q, case.k, case.v, causal=causal, chunk_size=16,
        **{**case.kwargs, "logits": case.logits + shift},
    )
    # float64 rounding of s + shift perturbs each logit by up to ulp(1e4) ~ 2e-12.
    assert_close(shifted, base, definition_scale(case, causal=causal), 1e-10, f"shift {shift}")


@pytest.mark.req("ZS-DEF-SHIFT")
def test_shift_invariance_is_not_vacuous(rng: np.random.Generator) -> None:
    """Shifting only some logits does change the output: the comparison above can fail."""
    case = draw_case(rng, 30, logit_scale=3.0)
    base = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)
    logits = case.logits.copy()
    logits[::2] += 1.0
    other = zeros_ref.attention(case.q, case.k, case.v, **{**case.kwargs, "logits": logits})
    with pytest.raises(AssertionError):
        assert_close(other, base, definition_scale(case, causal=True), 1e-10, "")


@pytest.mark.req("ZS-DEF-COSINE")
@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), causal=st.booleans())
def test_scale_invariance_of_q_and_k(seed: int, causal: bool) -> None:
    """Each q_t and k_i multiplied by its own positive number in 1e-30..1e30 (explicit logits)."""
    rng = np.random.default_rng(seed)
    case = draw_case(rng, 23, d=5, batch=(2,))
    n = case.q.shape[-2]
    q_scale = 10.0 ** rng.uniform(-30, 30, size=(2, n, 1))
    k_scale = 10.0 ** rng.uniform(-30, 30, size=(1, n, 1))
    q_scale[..., :2, :] = [[1e-30], [1e30]]
    k_scale[..., :2, :] = [[1e30], [1e-30]]
    base = zeros_ref.attention(case.q, case.k, case.v, causal=causal, chunk_size=8,
                               **case.kwargs)
    scaled = zeros_ref.attention(
        case.q * q_scale, case.k * k_scale, case.v, causal=causal, chunk_size=8, **case.kwargs
    )
    assert np.all(np.isfinite(scaled))
    assert_close(scaled, base, definition_scale(case, causal=causal), ROUNDING, "scaled q, k")


@pytest.mark.req("ZS-DEF-COSINE")
@pytest.mark.parametrize("factor", [1e-30, 1e-8, 3.0, 1e30])
def test_uniform_scale_of_q_and_k(rng: np.random.Generator, factor: float) -> None:
    case = draw_case(rng, 40, batch=(3,))
    base = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)
    scaled = zeros_ref.attention(case.q * factor, case.k / factor, case.v, **case.kwargs)
    assert_close(scaled, base, definition_scale(case, causal=True), ROUNDING, f"x{factor}")
    # A negative factor flips the cosine: the comparison would notice.
    flipped = zeros_ref.attention(-case.q, case.k, case.v, **case.kwargs)
    np.testing.assert_allclose(flipped, -base, rtol=0, atol=1e-14 * np.max(np.abs(base)))


@pytest.mark.req("ZS-DEF-WEIGHTS")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_linearity_in_v(rng: np.random.Generator, causal: bool, explicit_logits: bool) -> None:
    case = draw_case(rng, 50, batch=(2, 2), explicit_logits=explicit_logits)
    v2 = rng.normal(size=case.v.shape)
    a, b = 1.7, -0.35

    def run(v: np.ndarray) -> np.ndarray:
        return zeros_ref.attention(case.q, case.k, v, causal=causal, chunk_size=9, **case.kwargs)

    combined = run(a * case.v + b * v2)
    s = case.logits if explicit_logits else zeros_ref.deviation_logits(case.k, causal=causal)
    wide = Case(case.q, case.k, np.abs(a * case.v) + np.abs(b * v2), s, case.gates)
    assert_close(
        combined, a * run(case.v) + b * run(v2), definition_scale(wide, causal=causal),
        ROUNDING, "linearity",
    )


CAUSAL_TARGETS = ("q", "k", "v", "logits", "first", "higher", "zero")


@pytest.mark.req("ZS-DEF-CAUSAL")
@pytest.mark.parametrize("target", [*CAUSAL_TARGETS, "default-logits"])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_causality(rng: np.random.Generator, target: str, chunk_size: int) -> None:
    """Changing any input after position t leaves outputs 0..t unchanged.

    The future change is large (logits raised by 1000, values by 1e6) so that a stabiliser
    computed over the whole sequence, which lets the future in, would be caught too.
    """
    n, t = 40, 17
    case = draw_case(rng, n, batch=(2,), explicit_logits=target != "default-logits")
    base = zeros_ref.attention(case.q, case.k, case.v, chunk_size=chunk_size, **case.kwargs)
    future = slice(t + 1, None)
    kwargs = dict(case.kwargs)
    q, k, v = case.q.copy(), case.k.copy(), case.v.copy()
    if target == "q":
        q[..., future, :] = rng.normal(size=q[..., future, :].shape) * 1e6
    elif target in ("k", "default-logits"):
        k[..., future, :] = rng.normal(size=k[..., future, :].shape) * 1e3
    elif target == "v":
        v[..., future, :] = 1e6
    elif target == "logits":
        kwargs["logits"] = case.logits.copy()
        kwargs["logits"][..., future] += 1000.0
    else:
        kwargs[target] = case.gates[target].copy()
        kwargs[target][..., future] = 1e6
    changed = zeros_ref.attention(q, k, v, chunk_size=chunk_size, **kwargs)
    np.testing.assert_allclose(
        changed[..., : t + 1, :], base[..., : t + 1, :], rtol=0,
        atol=1e-14 * np.max(np.abs(base[..., : t + 1, :])),
    )
    assert not np.allclose(changed[..., t + 1 :, :], base[..., t + 1 :, :])


def _one_direction_case(rng: np.random.Generator, n: int, explicit_logits: bool) -> Case:
    """q and k positive multiples of one vector (cos = 1), random per-step gates g1, gh."""
    direction = rng.normal(size=5)
    q = rng.uniform(0.01, 100, size=(2, n, 1)) * direction
    k = rng.uniform(0.01, 100, size=(2, n, 1)) * direction
    v = rng.normal(size=(2, n, 3))
    logits = rng.normal(scale=3.0, size=(2, n)) if explicit_logits else None
    gates = {"first": rng.uniform(-2, 2, size=(2, n)), "higher": rng.uniform(-2, 2, size=n)}
    return Case(q, k, v, logits, gates)


@pytest.mark.req("ZS-DEF-ZEROSUM")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_zero_sum_black_box(rng: np.random.Generator, causal: bool, explicit_logits: bool) -> None:
    n = 45
    case = _one_direction_case(rng, n, explicit_logits)
    shift = rng.normal(size=3) * 10.0
    s = case.logits if explicit_logits else zeros_ref.deviation_logits(case.k, causal=causal)
    wide = Case(case.q, case.k, np.abs(case.v) + np.abs(shift), s, dict(case.gates))

    def run(v: np.ndarray, zero: object) -> np.ndarray:
        return zeros_ref.attention(
            case.q, case.k, v, causal=causal, chunk_size=8, zero=zero, **case.kwargs
        )

    # g0 = 0: adding a constant vector to every v_i leaves the output unchanged.
    base = run(case.v, 0.0)
    moved = run(case.v + shift, 0.0)
    scale = definition_scale(wide, causal=causal)
    assert_close(moved, base, scale, ROUNDING, "g0 = 0")
    # g0 != 0 (per step): the output shifts by g0_t times the vector.
    zero = rng.uniform(-1.5, 1.5, size=(2, n))
    wide.gates["zero"] = zero
    scale = definition_scale(wide, causal=causal)
    base = run(case.v, zero)
    moved = run(case.v + shift, zero)
    assert_close(moved, base + zero[..., None] * shift, scale, ROUNDING, "g0 != 0")
    with pytest.raises(AssertionError):
        assert_close(moved, base, scale, ROUNDING, "")
