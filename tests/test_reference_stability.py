"""Numerical stability of the reference (spec sections 6 and 7).

Inputs are first rounded to the tested dtype; the reference value is the float64 definition
evaluated on those rounded inputs. For the wide grids that value is `explicit_attention` in
float64 (the literal definition, row-wise max-stabilised, itself checked against the mpmath
evaluation, here on the same kind of input in `test_explicit_definition_is_exact_on_wide_logits`
and in test_reference_definition.py); degenerate cases compare with mpmath directly. Errors are
scale-relative as in spec 7.1, with `zeros_conformance.TOLERANCE`.
"""

from __future__ import annotations

import tracemalloc
import warnings

import mp_definition as mpd
import numpy as np
import pytest
from conftest import Case, assert_close, definition_scale, draw_case, round_to

import zeros_ref
from zeros_conformance import TOLERANCE, compare, output_scale

GATES = ("default", "random")


def wide_case(
    rng: np.random.Generator, n: int, kind: str, offset: float, gates: str, dtype: str
) -> Case:
    """A case whose logits span 1e4, rounded to `dtype` (kept as float64 arrays).

    kind "uniform": logits uniform in [-5e3, 5e3]; "outliers": standard normal logits with a
    few isolated outliers at +-5e3 (never at position 0, so that causal prefixes sit far below
    a later maximum).
    """
    case = draw_case(rng, n, d=6, dv=4, batch=(2,), gates=gates)
    if kind == "uniform":
        s = rng.uniform(-5e3, 5e3, size=(2, n))
    else:
        s = rng.normal(size=(2, n))
        s[:, [n // 8, n // 2, n - 3]] = [[5e3, -5e3, 4e3], [-5e3, 5e3, -2e3]]
    case.logits = s + offset
    return case.map(lambda x: round_to(x, dtype))


def run_in(case: Case, dtype: str, *, causal: bool, **options: object) -> np.ndarray:
    """zeros_ref.attention on `case` cast to numpy `dtype`; the output in that dtype."""
    cast = case.map(lambda x: np.asarray(x, dtype=dtype))
    out = zeros_ref.attention(cast.q, cast.k, cast.v, causal=causal, **cast.kwargs, **options)
    assert out.dtype == np.dtype(dtype)
    return out


def naive_global_max(case: Case, dtype: str) -> np.ndarray:
    """A deliberately naive causal O(N) form, stabilised by the *global* max of the logits.

    This is what public code does (spec 6, item 2): ``exp(s_i - max_all s)`` accumulated in
    cumulative sums, the mean term from raw logits (``G - (P/t) H``). It must be caught.
    """
    c = case.map(lambda x: np.asarray(x, dtype=dtype))
    n = c.q.shape[-2]
    qh = c.q / np.linalg.norm(c.q, axis=-1, keepdims=True)
    kh = c.k / np.linalg.norm(c.k, axis=-1, keepdims=True)
    s = c.logits
    t = np.arange(1, n + 1, dtype=dtype)
    ones = np.ones(n, dtype=dtype)
    g1, gh, g0 = (np.asarray(c.gates.get(name, x), dtype=dtype) * ones
                  for name, x in (("first", 1.0), ("higher", 1.0), ("zero", 0.0)))
    with np.errstate(all="ignore"):
        w = np.exp(s - np.max(s, axis=-1, keepdims=True))  # global max: the mistake
        kv = kh[..., :, None] * c.v[..., None, :]  # (*B, N, D, Dv)
        f = np.cumsum(w[..., None, None] * kv, axis=-3)
        g = np.cumsum(s[..., None, None] * kv, axis=-3)
        h = np.cumsum(kv, axis=-3)
        a = gh / np.cumsum(w, axis=-1)
        b = (g1 - gh) / t
        c0 = (g0 - gh) / t - b * np.cumsum(s, axis=-1) / t
        state = a[..., None, None] * f + b[..., None, None] * g + c0[..., None, None] * h
        return np.einsum("...nd,...nde->...ne", qh, state)


@pytest.mark.req("ZS-STAB-RANGE", "ZS-STAB-OFFSET")
@pytest.mark.parametrize("gates", GATES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
@pytest.mark.parametrize("kind", ["uniform", "outliers"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wide_logits(
    rng: np.random.Generator, dtype: str, kind: str, offset: float, causal: bool, gates: str
) -> None:
    n = 150
    case = wide_case(rng, n, kind, offset, gates, dtype)
    scale = definition_scale(case, causal=causal)
    ref = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    assert np.all(np.isfinite(ref))
    for chunk_size in (16, 64):
        out = run_in(case, dtype, causal=causal, chunk_size=chunk_size)
        assert np.all(np.isfinite(out))
        assert_close(out, ref, scale, TOLERANCE[dtype], f"{dtype} chunk_size={chunk_size}")
    if causal:
        naive = naive_global_max(case, dtype)
        result = compare(naive, ref, scale, TOLERANCE[dtype])
        assert not result.passed, "the global-max implementation should fail this input"


@pytest.mark.req("ZS-STAB-RANGE")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_explicit_definition_is_exact_on_wide_logits(
    rng: np.random.Generator, causal: bool
) -> None:
    """The float64 reference value used above agrees with mpmath on logits spanning 1e4."""
    case = wide_case(rng, 40, "uniform", 1e4, "random", "float64")
    ref = mpd.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    scale = definition_scale(case, causal=causal)
    explicit = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    assert_close(explicit, ref, scale, 1e-12, "explicit_attention vs mpmath")
    assert_close(run_in(case, "float64", causal=causal, chunk_size=8), ref, scale, 1e-12,
                 "attention vs mpmath")


def test_naive_implementation_is_right_on_tame_logits(rng: np.random.Generator) -> None:
    """The naive form above is the definition on small logits, so only stability fails it."""
    case = draw_case(rng, 60, d=6, dv=4, batch=(2,), gates="random")
    ref = zeros_ref.explicit_attention(case.q, case.k, case.v, **case.kwargs)
    assert_close(naive_global_max(case, "float64"), ref, definition_scale(case, causal=True),
                 1e-10, "naive on tame logits")


@pytest.mark.req("ZS-STAB-LONG")
def test_long_float32_sequence(rng: np.random.Generator) -> None:
    """N = 2^14 in float32 against the float64 reference on the rounded inputs."""
    n = 2**14
    case = draw_case(rng, n, d=16, dv=16, gates="random", logit_scale=4.0)
    case = case.map(lambda x: round_to(x, "float32"))
    ref = run_in(case, "float64", causal=True)
    out = run_in(case, "float32", causal=True)
    assert_close(out, ref, definition_scale(case, causal=True), TOLERANCE["float32"], "N=2^14")


def _degenerate(rng: np.random.Generator, name: str) -> Case:
    if name == "zero-vectors":
        case = draw_case(rng, 12, batch=(2,), gates="random")
        case.q[..., [0, 3, 4], :] = 0.0
        case.k[..., [2, 4, 11], :] = 0.0
    elif name == "equal-logits":
        case = draw_case(rng, 12, batch=(2,), gates="random")
        case.logits[...] = 2.5
    elif name == "N=1":
        case = draw_case(rng, 1, batch=(3,), gates="random")
    elif name == "D=1":
        case = draw_case(rng, 12, d=1, batch=(2,), gates="random")
    elif name == "Dv=1":
        case = draw_case(rng, 12, dv=1, batch=(2,), gates="random")
    elif name == "extreme-norms":
        case = draw_case(rng, 12, batch=(2,), gates="random")
        case.q[..., 1, :] *= 1e-300
        case.q[..., 2, :] *= 1e300
        case.k[..., 3, :] *= 1e-305
        case.k[..., 5, :] *= 1e300
    else:
        raise ValueError(name)
    return case


DEGENERATE = ["zero-vectors", "equal-logits", "N=1", "D=1", "Dv=1"]


@pytest.mark.req("ZS-STAB-DEGENERATE", "ZS-DEF-COSINE")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize(
    ("name", "dtype"),
    [(name, dtype) for name in DEGENERATE for dtype in ("float64", "float32")]
    + [("extreme-norms", "float64")],  # norms of 1e300 are not float32 numbers
)
def test_degenerate_inputs(rng: np.random.Generator, name: str, dtype: str, causal: bool) -> None:
    case = _degenerate(rng, name).map(lambda x: round_to(x, dtype))
    ref = mpd.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    scale = definition_scale(case, causal=causal)
    for chunk_size in (1, 5, 64):
        out = run_in(case, dtype, causal=causal, chunk_size=chunk_size)
        assert np.all(np.isfinite(out))
        tolerance = 1e-12 if dtype == "float64" else TOLERANCE[dtype]
        assert_close(out, ref, scale, tolerance, f"{name} chunk_size={chunk_size}")
    if name == "zero-vectors":  # cos = 0: rows of a zero query are exactly zero
        assert not np.any(out[..., [0, 3, 4], :])


@pytest.mark.req("ZS-DTYPE-HALF", "ZS-STAB-RANGE")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("spread", [4.0, 1e3], ids=["tame", "spread-1e3"])
def test_float16_numpy(rng: np.random.Generator, causal: bool, spread: float) -> None:
    n = 300  # with logits spanning 1e3, float16 sums over 300 tokens would overflow
    case = draw_case(rng, n, d=8, dv=4, batch=(2,), gates="random")
    case.logits = rng.uniform(-spread / 2, spread / 2, size=(2, n))
    case = case.map(lambda x: round_to(x, "float16"))
    ref = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    out = run_in(case, "float16", causal=causal)
    assert np.all(np.isfinite(out))
    assert_close(out, ref, definition_scale(case, causal=causal), TOLERANCE["float16"],
                 "float16")
    default = case.map(lambda x: np.asarray(x, dtype=np.float16))
    plain = zeros_ref.attention(default.q, default.k, default.v, causal=causal)
    assert plain.dtype == np.float16 and np.all(np.isfinite(plain))


@pytest.mark.req("ZS-ON-MEMORY")
def test_memory_of_one_long_call(rng: np.random.Generator) -> None:
    """N = 16384, D = Dv = 16, float64: the peak traced memory of one call stays under 64 MB.

    The inputs take 2 MB each and the output 2 MB; an N x N array would take 2 GB, and the
    cumulative-sum form of public code (`naive_global_max`), which holds several N x D x Dv
    arrays of 32 MB each, is shown to exceed the bound.
    """
    n = 16384
    q, k, v = rng.normal(size=(3, n, 16))
    logits = rng.normal(size=n)
    for kwargs in ({"logits": logits}, {}, {"causal": False}):
        tracemalloc.start()
        try:
            out = zeros_ref.attention(q, k, v, **kwargs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert out.shape == (n, 16)
        assert peak < 64 * 2**20, f"{kwargs}: peak {peak / 2**20:.1f} MiB"
    tracemalloc.start()
    try:
        naive_global_max(Case(q, k, v, logits), "float64")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > 64 * 2**20, "the memory bound should catch an O(N D Dv) implementation"


NONFINITE_TARGETS = ("q", "k", "v", "logits", "first", "higher", "zero", "default-logits")


def _poison(case: Case, target: str, i: int, value: float) -> Case:
    c = case.map(np.copy)
    if target in ("q", "k", "v", "default-logits"):
        getattr(c, "k" if target == "default-logits" else target)[..., i, 0] = value
    elif target == "logits":
        c.logits[..., i] = value
    else:
        c.gates[target][..., i] = value
    return c


@pytest.mark.req("ZS-ERR-NONFINITE", "ZS-ERR-NONFINITE-V", "ZS-DEF-CAUSAL")
@pytest.mark.parametrize("chunk_size", [4, 5, 64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("target", NONFINITE_TARGETS)
def test_nonfinite_stays_in_the_future(
    rng: np.random.Generator, target: str, value: float, chunk_size: int
) -> None:
    """A non-finite value at position i = 9 (inside a chunk of 4 and 64, last of a chunk of 5)."""
    n, i = 20, 9
    case = draw_case(rng, n, batch=(2,), explicit_logits=target != "default-logits")
    clean = zeros_ref.attention(case.q, case.k, case.v, chunk_size=chunk_size, **case.kwargs)
    bad = _poison(case, target, i, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = zeros_ref.attention(bad.q, bad.k, bad.v, chunk_size=chunk_size, **bad.kwargs)
    assert np.all(np.isfinite(out[..., :i, :])), "a non-finite value reached the past"
    np.testing.assert_allclose(out[..., :i, :], clean[..., :i, :], rtol=0,
                               atol=1e-14 * np.max(np.abs(clean[..., :i, :])))
    # SHOULD: the output at t = i is not a finite (silently wrong) value.
    assert not np.any(np.all(np.isfinite(out[..., i, :]), axis=-1))


def test_output_scale_is_a_bound(rng: np.random.Generator) -> None:
    """The scale used throughout bounds |out_t| (spec 7.1), so relative errors are meaningful."""
    case = draw_case(rng, 12, batch=(2,), gates="random", logit_scale=6.0)
    case.gates = {name: np.broadcast_to(g, (2, 12)) for name, g in case.gates.items()}
    out = mpd.attention(case.q, case.k, case.v, **case.kwargs)
    scale = output_scale(case.v, case.logits, **case.gates, causal=True)
    assert np.all(np.max(np.abs(out), axis=-1) <= scale * (1 + 1e-12))
