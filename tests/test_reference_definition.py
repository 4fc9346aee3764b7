"""The reference against its explicit form and the independent mpmath definition (spec 2, 3).

Errors are measured as in spec 7.1: per output row, relative to the row's output scale
``zeros_conformance.output_scale`` (max |v_i| over P(t) times |gh| + |g1 - gh| times
the logit range over P(t) + |g0 - gh|), with `zeros_conformance.compare`. The
reference must agree with the mpmath evaluation to 1e-12 of that scale in float64 (spec 7.1),
and so must its chunked form with its explicit (quadratic) form.
"""

from __future__ import annotations

import mp_definition as mpd
import numpy as np
import pytest
from conftest import Case, assert_close, assert_within, definition_scale, draw_case, gate_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

import zeros_ref
from zeros_conformance import output_scale

EXACT = 1e-12
"""Agreement of the float64 reference with the mpmath definition (spec 7.1, last paragraph)."""


def logits_used(case: Case, causal: bool) -> np.ndarray:
    """The logits the call uses: the explicit ones or the default ones (ZS-LOG-DEFAULT)."""
    if case.logits is not None:
        return case.logits
    return mpd.deviation_logits(case.k, causal=causal)


def scale_of(case: Case, causal: bool) -> np.ndarray:
    return definition_scale(case, causal=causal, logits=logits_used(case, causal))


@pytest.mark.req(
    "ZS-DEF-WEIGHTS", "ZS-DEF-GATES", "ZS-DEF-BIDIRECTIONAL", "ZS-LOG-DEFAULT", "ZS-DEF-COSINE"
)
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 63, 64, 65, 128, 300])
def test_chunked_matches_explicit(
    rng: np.random.Generator, n: int, causal: bool, explicit_logits: bool
) -> None:
    case = draw_case(rng, n, d=5, dv=3, batch=(2, 3), explicit_logits=explicit_logits)
    ref = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    assert ref.shape == (2, 3, n, 3)
    scale = scale_of(case, causal)
    for chunk_size in sorted({1, 3, 64, n + 1}):
        out = zeros_ref.attention(
            case.q, case.k, case.v, causal=causal, chunk_size=chunk_size, **case.kwargs
        )
        assert_close(out, ref, scale, EXACT, f"N={n} chunk_size={chunk_size}")


@pytest.mark.req(
    "ZS-DEF-WEIGHTS", "ZS-DEF-GATES", "ZS-DEF-BIDIRECTIONAL", "ZS-LOG-DEFAULT", "ZS-DEF-COSINE"
)
@pytest.mark.parametrize("gates", ["random", "scalar", "default"])
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_matches_mpmath(
    rng: np.random.Generator, n: int, causal: bool, explicit_logits: bool, gates: str
) -> None:
    case = draw_case(rng, n, d=3, dv=2, batch=(2, 3), explicit_logits=explicit_logits, gates=gates)
    ref = mpd.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    scale = scale_of(case, causal)
    explicit = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    assert_close(explicit, ref, scale, EXACT, "explicit_attention vs mpmath")
    for chunk_size in (1, 3, 64, n + 1):
        out = zeros_ref.attention(
            case.q, case.k, case.v, causal=causal, chunk_size=chunk_size, **case.kwargs
        )
        assert_close(out, ref, scale, EXACT, f"attention(chunk_size={chunk_size}) vs mpmath")


@st.composite
def drawn_cases(draw: st.DrawFn) -> tuple[Case, bool, int]:
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 5))
    dv = draw(st.integers(1, 4))
    batch = draw(st.sampled_from([(), (2,), (1, 2), (2, 1)]))
    explicit = draw(st.booleans())
    gates = draw(st.sampled_from(["random", "scalar", "default"]))
    scale = draw(st.sampled_from([0.1, 2.0, 30.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    case = draw_case(
        rng, n, d=d, dv=dv, batch=batch, explicit_logits=explicit, gates=gates, logit_scale=scale
    )
    return case, draw(st.booleans()), draw(st.integers(1, 13))


@pytest.mark.req("ZS-DEF-WEIGHTS", "ZS-DEF-GATES", "ZS-DEF-BIDIRECTIONAL", "ZS-LOG-DEFAULT")
@settings(deadline=None, max_examples=40)
@given(drawn=drawn_cases())
def test_drawn_cases_match_mpmath(drawn: tuple[Case, bool, int]) -> None:
    case, causal, chunk_size = drawn
    ref = mpd.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    out = zeros_ref.attention(
        case.q, case.k, case.v, causal=causal, chunk_size=chunk_size, **case.kwargs
    )
    assert_close(out, ref, scale_of(case, causal), EXACT, f"chunk_size={chunk_size}")


@pytest.mark.req("ZS-DEF-WEIGHTS", "ZS-DEF-GATES", "ZS-DEF-BIDIRECTIONAL")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_weights_match_mpmath(rng: np.random.Generator, causal: bool) -> None:
    n = 9
    s = rng.normal(scale=3.0, size=(2, n))
    gates = {name: rng.uniform(-1.5, 1.5, size=(2, n)) for name in ("first", "higher", "zero")}
    r = zeros_ref.weights(s, causal=causal, **gates)
    ref = mpd.weights(s, causal=causal, **gates)
    assert r.shape == (2, n, n)
    # |r[t,i]| is at most |gh| + |g1 - gh| range(s) + |g0 - gh| (times 1/n or p <= 1).
    bound = output_scale(np.ones((n, 1)), s, **gates, causal=causal)
    assert_within(np.abs(r - ref), EXACT * bound[..., None], "weights vs mpmath")
    if causal:
        assert not np.any(np.triu(r, k=1)), "causal weights must vanish above the diagonal"


@pytest.mark.req("ZS-DEF-ZEROSUM")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("n", [1, 2, 17, 300])
def test_weight_rows_sum_to_zero(rng: np.random.Generator, n: int, causal: bool) -> None:
    s = rng.normal(scale=4.0, size=(3, n))
    first = rng.uniform(-2, 2, size=(3, n))
    higher = rng.uniform(-2, 2, size=(n,))
    r = zeros_ref.weights(s, first=first, higher=higher, zero=0.0, causal=causal)
    size = np.sum(np.abs(r), axis=-1)
    assert_within(np.abs(np.sum(r, axis=-1)), 1e-14 * n * size, "row sums")
    # With g0 != 0 the rows sum to g0 instead: the test distinguishes the two.
    zero = rng.uniform(0.5, 1.5, size=(3, n))
    r0 = zeros_ref.weights(s, first=first, higher=higher, zero=zero, causal=causal)
    np.testing.assert_allclose(np.sum(r0, axis=-1), zero, rtol=1e-12 * n, atol=0)


def _softmax_rows(s: np.ndarray, causal: bool) -> np.ndarray:
    n = s.shape[-1]
    p = np.zeros((*s.shape[:-1], n, n))
    for t in range(n):
        seen = slice(0, t + 1) if causal else slice(0, n)
        e = np.exp(s[..., seen] - np.max(s[..., seen], axis=-1, keepdims=True))
        p[..., t, seen] = e / np.sum(e, axis=-1, keepdims=True)
    return p


@pytest.mark.req("ZS-DEF-SOFTMAX")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_unit_gates_give_softmax(rng: np.random.Generator, causal: bool) -> None:
    n = 40
    s = rng.normal(scale=5.0, size=(2, n))
    p = _softmax_rows(s, causal)
    r = zeros_ref.weights(s, first=1.0, higher=1.0, zero=1.0, causal=causal)
    np.testing.assert_allclose(r, p, rtol=1e-12, atol=1e-15)
    # With cos = 1 (q and k positive multiples of one vector) the output is the softmax mean.
    direction = rng.normal(size=4)
    q = rng.uniform(0.1, 10, size=(2, n, 1)) * direction
    k = rng.uniform(0.1, 10, size=(2, n, 1)) * direction
    v = rng.normal(size=(2, n, 3))
    for chunk_size in (1, 7, 64):
        out = zeros_ref.attention(
            q, k, v, logits=s, first=1.0, higher=1.0, zero=1.0, causal=causal,
            chunk_size=chunk_size,
        )
        np.testing.assert_allclose(out, p @ v, rtol=0, atol=1e-13 * np.max(np.abs(v)))


@pytest.mark.req("ZS-DEF-WEIGHTS", "ZS-DEF-GATES", "ZS-DEF-COSINE")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
def test_first_output_is_zero_gate_times_cosine_times_value(
    rng: np.random.Generator, explicit_logits: bool
) -> None:
    case = draw_case(rng, 5, d=4, dv=3, batch=(2, 3), explicit_logits=explicit_logits)
    q, k = (np.broadcast_to(x, (2, 3, 5, 4)) for x in (case.q, case.k))
    v = np.broadcast_to(case.v, (2, 3, 5, 3))
    cos = np.sum(q[..., 0, :] * k[..., 0, :], axis=-1) / (
        np.linalg.norm(q[..., 0, :], axis=-1) * np.linalg.norm(k[..., 0, :], axis=-1)
    )
    expected = (case.gates["zero"][..., 0] * cos)[..., None] * v[..., 0, :]
    scale = scale_of(case, True)[..., 0]
    for out in (
        zeros_ref.attention(case.q, case.k, case.v, chunk_size=2, **case.kwargs),
        zeros_ref.explicit_attention(case.q, case.k, case.v, **case.kwargs),
    ):
        assert_within(np.abs(out[..., 0, :] - expected), 1e-14 * scale[..., None], "t = 1")
    # Default gates: g0 = 0, so the first output vanishes.
    out = zeros_ref.attention(case.q, case.k, case.v, logits=case.logits)
    assert np.all(np.abs(out[..., 0, :]) <= 1e-14 * np.max(np.abs(case.v)))


@pytest.mark.req("ZS-DEF-WEIGHTS", "ZS-STAB-DEGENERATE")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("level", [0.0, 0.1, -3.7, 1e4])
def test_all_equal_logits_give_zero_gate_over_n(
    rng: np.random.Generator, causal: bool, level: float
) -> None:
    n = 20
    s = np.full((2, n), level)
    first, higher, zero = (rng.uniform(-1.5, 1.5, size=(2, n)) for _ in range(3))
    r = zeros_ref.weights(s, first=first, higher=higher, zero=zero, causal=causal)
    count = np.arange(1, n + 1.0) if causal else np.full(n, float(n))
    visible = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    expected = np.where(visible, (zero / count)[..., None], 0.0)
    bound = np.abs(first) + np.abs(higher) + np.abs(zero)
    assert_within(np.abs(r - expected), 1e-13 * bound[..., None], "r = g0 / n")
    q, k, v = rng.normal(size=(3, 2, n, 4))
    out = zeros_ref.attention(q, k, v, logits=s, first=first, higher=higher, zero=zero,
                              causal=causal, chunk_size=7)
    qh = q / np.linalg.norm(q, axis=-1, keepdims=True)
    kh = k / np.linalg.norm(k, axis=-1, keepdims=True)
    ref = (expected * (qh @ np.swapaxes(kh, -1, -2))) @ v
    case = Case(q, k, v, s, {"first": first, "higher": higher, "zero": zero})
    assert_close(out, ref, definition_scale(case, causal=causal), EXACT, "all-equal logits")


@pytest.mark.req("ZS-LOG-DEFAULT")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_default_logits_are_deviation_logits_of_k(rng: np.random.Generator, causal: bool) -> None:
    case = draw_case(rng, 33, d=6, dv=2, batch=(2,), explicit_logits=False)
    s = mpd.deviation_logits(case.k, causal=causal)
    np.testing.assert_allclose(
        zeros_ref.deviation_logits(case.k, causal=causal), s, rtol=1e-13, atol=1e-14
    )
    default = zeros_ref.attention(case.q, case.k, case.v, causal=causal, chunk_size=8, **case.gates)
    given = zeros_ref.attention(
        case.q, case.k, case.v, logits=s, causal=causal, chunk_size=8, **case.gates
    )
    assert_close(default, given, scale_of(case, causal), EXACT, "logits=None vs deviation logits")
    # The other mode's logits differ, and the comparison notices.
    other = zeros_ref.attention(
        case.q, case.k, case.v, logits=mpd.deviation_logits(case.k, causal=not causal),
        causal=causal, **case.gates,
    )
    with pytest.raises(AssertionError):
        assert_close(default, other, scale_of(case, causal), EXACT, "")


@pytest.mark.req("ZS-DEF-GATES")
def test_gate_forms_agree(rng: np.random.Generator) -> None:
    """Python floats, 0-d arrays, (N,), (1, N) and (*B, N) gates of equal values agree."""
    n = 11
    case = draw_case(rng, n, batch=(2, 3), gates="default")
    values = {"first": 0.3, "higher": -0.8, "zero": 0.45}
    ref = zeros_ref.attention(case.q, case.k, case.v, logits=case.logits, **values)
    forms = [
        lambda x: np.asarray(x),
        lambda x: np.full(n, x),
        lambda x: np.full((1, n), x),
        lambda x: np.full((3, 1), x),
        lambda x: np.full((2, 3, n), x),
    ]
    for form in forms:
        gates = {name: form(x) for name, x in values.items()}
        out = zeros_ref.attention(case.q, case.k, case.v, logits=case.logits, **gates)
        np.testing.assert_array_equal(out, ref)
    # Exchanging the roles of two gates changes the output.
    swapped = zeros_ref.attention(
        case.q, case.k, case.v, logits=case.logits,
        first=values["higher"], higher=values["first"], zero=values["zero"],
    )
    assert not np.allclose(swapped, ref)


def test_gate_arrays_helper_defaults() -> None:
    """The test helper fills in the default gates (1, 1, 0) of spec section 3."""
    case = Case(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1)), None, {"zero": 0.5})
    first, higher, zero = gate_arrays(case, 2)
    assert first.tolist() == [1.0, 1.0] and higher.tolist() == [1.0, 1.0]
    assert zero.tolist() == [0.5, 0.5]
