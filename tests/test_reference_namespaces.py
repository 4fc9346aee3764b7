"""The reference on every array library: numpy, array-api-strict and torch CPU (spec 7).

The output must be an array of the input's library, dtype and device with the broadcast shape
(ZS-DTYPE-OUTPUT), with the values of the numpy float64 run on the same rounded inputs.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
import pytest
from conftest import (
    assert_close,
    definition_scale,
    draw_case,
    dtype_name,
    from_numpy,
    library_name,
    round_to,
    to_numpy,
)

import zeros_ref
from zeros_conformance import TOLERANCE


def assert_kind(out: Any, like: Any, shape: tuple[int, ...]) -> None:
    """`out` is an array of `like`'s library, dtype and device, of the given shape."""
    assert library_name(out) == library_name(like)
    assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(like)
    assert out.dtype == like.dtype, f"dtype {out.dtype}, expected {like.dtype}"
    assert array_api_compat.device(out) == array_api_compat.device(like)
    assert tuple(out.shape) == shape


@pytest.mark.req("ZS-DTYPE-OUTPUT", "ZS-ACC-REFERENCE", "ZS-DEF-GATES")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_output_kind_and_values(
    xp: Any, rng: np.random.Generator, dtype: str, causal: bool, explicit_logits: bool
) -> None:
    n, d, dv = 37, 5, 3
    case = draw_case(rng, n, d=d, dv=dv, batch=(2, 3), explicit_logits=explicit_logits)
    # Leading axes that broadcast: q (2, 3), k (1, 3), v (2, 1), logits (2, 3), gates mixed.
    case = case.map(lambda x: round_to(x, dtype))
    args = case.map(lambda x: from_numpy(xp, x, dtype))
    out = zeros_ref.attention(args.q, args.k, args.v, causal=causal, chunk_size=16,
                              **args.kwargs)
    assert_kind(out, args.q, (2, 3, n, dv))
    ref = zeros_ref.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    s = case.logits if explicit_logits else zeros_ref.deviation_logits(case.k, causal=causal)
    scale = definition_scale(case, causal=causal, logits=s)
    assert_close(to_numpy(out), ref, scale, TOLERANCE[dtype], f"{library_name(out)} {dtype}")
    explicit = zeros_ref.explicit_attention(args.q, args.k, args.v, causal=causal,
                                            **args.kwargs)
    assert_kind(explicit, args.q, (2, 3, n, dv))
    assert_close(to_numpy(explicit), ref, scale, TOLERANCE[dtype], "explicit_attention")


@pytest.mark.req("ZS-DTYPE-OUTPUT")
def test_python_float_gates_and_broadcast_shape(xp: Any, rng: np.random.Generator) -> None:
    q = from_numpy(xp, rng.normal(size=(4, 1, 6, 3)))
    k = from_numpy(xp, rng.normal(size=(5, 6, 3)))
    v = from_numpy(xp, rng.normal(size=(6, 2)))
    out = zeros_ref.attention(q, k, v, first=0.5, higher=2, zero=-0.25)
    assert_kind(out, q, (4, 5, 6, 2))
    ref = zeros_ref.attention(*(to_numpy(x) for x in (q, k, v)), first=0.5, higher=2,
                              zero=-0.25)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-13, atol=1e-15)


@pytest.mark.req("ZS-DTYPE-OUTPUT", "ZS-DTYPE-HALF")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision(rng: np.random.Generator, dtype: str) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    xp = array_api_compat.array_namespace(torch.zeros(1))
    n = 50
    case = draw_case(rng, n, d=8, dv=4, batch=(2,), gates="random", logit_scale=4.0)
    case = case.map(lambda x: round_to(x, dtype))
    args = case.map(lambda x: from_numpy(xp, x, dtype))
    for causal in (True, False):
        out = zeros_ref.attention(args.q, args.k, args.v, causal=causal, **args.kwargs)
        assert_kind(out, args.q, (2, n, 4))
        assert out.dtype == getattr(torch, dtype)
        ref = zeros_ref.explicit_attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
        assert_close(to_numpy(out), ref, definition_scale(case, causal=causal),
                     TOLERANCE[dtype], f"torch {dtype}")
    # Default gates and logits, and logits spanning 1e3: finite, same dtype.
    wide = from_numpy(xp, rng.uniform(-500, 500, size=(2, n)), dtype)
    out = zeros_ref.attention(args.q, args.k, args.v, logits=wide)
    assert out.dtype == getattr(torch, dtype)
    assert bool(torch.all(torch.isfinite(out)))
    plain = zeros_ref.attention(args.q, args.k, args.v)
    assert plain.dtype == getattr(torch, dtype)


@pytest.mark.req("ZS-DTYPE-OUTPUT")
def test_helpers_keep_the_library(xp: Any, rng: np.random.Generator) -> None:
    u = from_numpy(xp, rng.normal(size=(2, 7, 4)))
    for f in (zeros_ref.deviation_logits, zeros_ref.quadratic_logits, zeros_ref.mean_logits):
        s = f(u)
        assert library_name(s) == library_name(u) and s.dtype == u.dtype
        assert tuple(s.shape) == (2, 7)
    r = zeros_ref.weights(s, first=from_numpy(xp, rng.normal(size=7)))
    assert_kind(r, s, (2, 7, 7))
    for layout in ("half", "interleaved"):
        rotated = zeros_ref.rope(u, offset=3, layout=layout)
        assert_kind(rotated, u, (2, 7, 4))
        np.testing.assert_allclose(
            to_numpy(rotated), zeros_ref.rope(to_numpy(u), offset=3, layout=layout),
            rtol=1e-13, atol=1e-15,
        )


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-DTYPE-OUTPUT")
def test_streaming_in_each_library(xp: Any, rng: np.random.Generator) -> None:
    case = draw_case(rng, 30, batch=(2,), explicit_logits=False)
    args = case.map(lambda x: from_numpy(xp, x))
    whole = zeros_ref.attention(args.q, args.k, args.v, **args.kwargs)
    state, outs = None, []
    for a, b in ((0, 11), (11, 12), (12, 30)):
        kwargs = {name: g[..., a:b] for name, g in args.gates.items()}
        out, state = zeros_ref.attention(args.q[..., a:b, :], args.k[..., a:b, :],
                                         args.v[..., a:b, :], state=state, return_state=True,
                                         **kwargs)
        assert_kind(out, args.q, (2, b - a, 3))
        outs.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=-2), to_numpy(whole), rtol=1e-12,
                               atol=1e-13)


@pytest.mark.req("ZS-ERR-NONFINITE", "ZS-ERR-NONFINITE-V")
@pytest.mark.parametrize("target", ["v", "k", "logits"])
def test_nonfinite_stays_in_the_future_in_each_library(
    xp: Any, rng: np.random.Generator, target: str
) -> None:
    n, i = 16, 6
    case = draw_case(rng, n, batch=(2,))
    clean = zeros_ref.attention(case.q, case.k, case.v, chunk_size=8, **case.kwargs)
    bad = case.map(np.copy)
    if target == "logits":
        bad.logits[..., i] = np.inf
    else:
        getattr(bad, target)[..., i, 1] = np.nan
    args = bad.map(lambda x: from_numpy(xp, x))
    with np.errstate(all="ignore"):
        out = to_numpy(zeros_ref.attention(args.q, args.k, args.v, chunk_size=8, **args.kwargs))
    assert np.all(np.isfinite(out[..., :i, :]))
    np.testing.assert_allclose(out[..., :i, :], clean[..., :i, :], rtol=1e-13, atol=1e-14)


def test_dtype_name_helper(xp: Any) -> None:
    assert dtype_name(xp.asarray([1.0], dtype=xp.float32).dtype) == "float32"
