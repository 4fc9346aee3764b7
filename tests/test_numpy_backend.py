"""The NumPy backend agrees with the reference.

The backend (`zeros_backends.numpy_backend`) computes the chunked form in one frame per slab
of tokens and falls back to the reference's per-row step where that frame is not exact; the
tests check agreement with `zeros_ref.attention` in float64 to 1e-12 of the output scale
(spec 7.1, stricter than its 1e-10) and that both paths really run. No test asserts a timing.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from conftest import assert_close, definition_scale, draw_case

import zeros_ref
from zeros_backends.numpy_backend import FAST, REFERENCE, NumpyBackend, backend
from zeros_backends.numpy_backend import logits as numpy_logits

TIGHT = 1e-12
"""Scale-relative agreement required in float64 (the spec's float64 tolerance is 1e-10)."""

# Small chunks and slabs so that short sequences span several slabs, whole chunks after
# the slabs and a partial chunk: every kind of span of the backend runs.
SMALL = NumpyBackend(chunk_size=8, slab_size=4)


def _check(be: NumpyBackend, case: object, *, causal: bool, tolerance: float = TIGHT) -> None:
    out = be.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    ref = zeros_ref.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    logits = case.logits
    if logits is None:
        logits = zeros_ref.deviation_logits(case.k, causal=causal)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, ref, definition_scale(case, causal=causal, logits=logits), tolerance,
                 f"{be.name} C={be.chunk_size} causal={causal}")


@pytest.mark.req("ZS-ACC-REFERENCE")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("explicit_logits", [True, False])
@pytest.mark.parametrize("gates", ["random", "scalar", "default"])
@pytest.mark.parametrize(("n", "batch"), [(1, ()), (37, (2, 3)), (75, (3,)), (300, (2, 2))])
@pytest.mark.parametrize("be", [SMALL, backend], ids=["C8", "default"])
def test_agrees_with_reference(rng, be, n, batch, gates, explicit_logits, causal) -> None:
    case = draw_case(rng, n, d=6, dv=5, batch=batch, explicit_logits=explicit_logits,
                     gates=gates)
    _check(be, case, causal=causal)


@pytest.mark.req("ZS-STAB-RANGE", "ZS-STAB-OFFSET")
@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_wide_logits_take_the_reference_path(rng, offset) -> None:
    case = draw_case(rng, 200, d=6, dv=5, batch=(3,))
    case.logits = rng.uniform(-5e3, 5e3, size=(3, 200)) + offset  # a range of 1e4
    _check(SMALL, case, causal=True)
    paths = SMALL.last_paths
    assert paths[FAST] > 0 and paths[REFERENCE] > 0, paths
    assert paths[FAST] + paths[REFERENCE] == 3 * 200


@pytest.mark.req("ZS-STAB-OFFSET")
def test_narrow_logits_take_only_the_fast_path(rng) -> None:
    case = draw_case(rng, 200, d=6, dv=5, batch=(3,))
    case.logits = 3.0 * rng.normal(size=(3, 200)) + 1e4
    _check(SMALL, case, causal=True)
    assert dict(SMALL.last_paths) == {FAST: 3 * 200}


@pytest.mark.req("ZS-STAB-RANGE")
def test_spread_limit_keeps_folded_weights_normal(rng) -> None:
    """A slab whose logits spread beyond -log(tiny)/2 while |k| is huge (1/|k| ~ 5e-39).

    Nothing overflows, but in one shared frame the folded key factors w_i / |k_i| ~
    exp(-650) / 2e38 would be subnormal for weights that matter, so the spread test must
    send the slab elsewhere.
    """
    case = draw_case(rng, 64, d=6, dv=5, batch=(2,))
    case.k = rng.normal(size=(2, 64, 6))
    case.k *= 2e38 / np.linalg.norm(case.k, axis=-1, keepdims=True)
    case.logits = rng.normal(size=(2, 64))
    case.logits[:, 40] = 650.0
    be = NumpyBackend(chunk_size=16, slab_size=4)
    _check(be, case, causal=True)
    assert be.last_paths[REFERENCE] == 2 * 16  # the chunk holding the jump, in each row


def test_rows_on_different_paths_in_one_slab(rng) -> None:
    """Rows of one slab split between the paths (sub-batches taken and merged)."""
    case = draw_case(rng, 130, d=6, dv=5, batch=(4,))
    case.logits[1] = rng.uniform(-1e3, 1e3, size=130)  # only row 1 spreads beyond the limit
    _check(SMALL, case, causal=True)
    assert SMALL.last_paths[REFERENCE] > 0
    assert SMALL.last_paths[REFERENCE] < 130  # row 1 returns to the fast path later


@pytest.mark.parametrize("workers", [1, 2])
def test_level_gates_leave_g_out_on_both_paths(rng, workers) -> None:
    """first = higher at every step: G weighs in no output, so unless the state is returned
    the backend does not keep it; rows on the reference's step read it with a zero slope.
    """
    case = draw_case(rng, 200, d=6, dv=5, batch=(4,))
    case.gates["higher"] = case.gates["first"]  # per step, (4, 200)
    case.logits[1, 120:] = rng.uniform(-1e3, 1e3, size=80)  # row 1 leaves the fast path
    be = NumpyBackend(chunk_size=8, slab_size=4, workers=workers)
    _check(be, case, causal=True)
    assert be.last_paths[FAST] > 0 and be.last_paths[REFERENCE] > 0, be.last_paths
    _, state = be.attention(case.q, case.k, case.v, return_state=True, **case.kwargs)
    _, expected = zeros_ref.attention(case.q, case.k, case.v, return_state=True, **case.kwargs)
    scale = np.abs(expected.kv).max()
    np.testing.assert_allclose(state.kv, expected.kv, rtol=0, atol=TIGHT * scale)


@pytest.mark.req("ZS-LOG-DEFAULT")
@pytest.mark.parametrize("piece", [96, 128, 4096])
def test_default_logits_in_pieces_and_chunks(rng, monkeypatch, piece) -> None:
    """The backend's prefix sums (chunk products, carried totals, partial chunks, pieces)
    give the reference's deviation logits, also after a prefix held in a state."""
    monkeypatch.setattr(numpy_logits, "LOGITS_PIECE", piece)
    k = rng.normal(size=(3, 300, 6))
    whole = zeros_ref.deviation_logits(k)
    _, state = zeros_ref.attention(k[:, :70], k[:, :70], k[:, :70], return_state=True)
    start = zeros_ref.State.empty(np, (3,), 6, 6, dtype=k.dtype, device="cpu")
    for prefix, st in ((0, start), (70, state)):
        logits, key_sum = numpy_logits.causal_logits(k[:, prefix:], st)
        np.testing.assert_allclose(logits, whole[:, prefix:], rtol=0, atol=1e-12)
        np.testing.assert_allclose(key_sum, k.sum(axis=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_threads_give_the_same_result(rng, workers) -> None:
    case = draw_case(rng, 200, d=6, dv=5, batch=(5,))
    be = NumpyBackend(chunk_size=8, slab_size=2, workers=workers)
    _check(be, case, causal=True)
    _check(be, case, causal=False)


@pytest.mark.req("ZS-STAB-DEGENERATE")
def test_zero_vectors_and_equal_logits(rng) -> None:
    case = draw_case(rng, 90, d=6, dv=5, batch=(2,))
    case.q[0, 3] = 0.0
    case.k[0, 10:30] = 0.0
    case.logits[1] = 0.5
    for causal in (True, False):
        _check(SMALL, case, causal=causal)
        out = SMALL.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
        assert np.isfinite(out).all()


@pytest.mark.req("ZS-STAB-MAGNITUDE", "ZS-DEF-COSINE")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("dtype", "tiny", "huge"), [
    ("float32", 1e-25, 1e30), ("float64", 1e-170, 1e160)])
def test_vectors_whose_squares_underflow_keep_their_direction(rng, dtype, tiny, huge,
                                                              causal) -> None:
    """Found by the magnitude fuzzing (issue 21): a q or k row whose squared norm underflows
    to 0 was taken for a zero vector, which put outputs off by up to the output scale."""
    case = draw_case(rng, 90, d=6, dv=5, batch=(2,)).map(lambda x: x.astype(dtype))
    case.q[0] *= tiny  # every query of row 0
    case.k[0, ::3] *= tiny  # every third key
    case.q[1, 7] *= huge  # one query
    case.k[0, 40] *= huge  # one key
    out = SMALL.attention(case.q, case.k, case.v, causal=causal, **case.kwargs)
    wide = case.map(lambda x: x.astype(np.float64))
    ref = zeros_ref.attention(wide.q, wide.k, wide.v, causal=causal, **wide.kwargs)
    tolerance = TIGHT if dtype == "float64" else 2e-4
    assert_close(out, ref, definition_scale(wide, causal=causal), tolerance, dtype)


@pytest.mark.req("ZS-DTYPE-HALF", "ZS-DTYPE-OUTPUT")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_low_precision_dtypes(rng, dtype) -> None:
    case = draw_case(rng, 150, d=8, dv=4, batch=(2,)).map(lambda x: x.astype(dtype))
    out = SMALL.attention(case.q, case.k, case.v, **case.kwargs)
    assert out.dtype == np.dtype(dtype)
    ref = zeros_ref.attention(*(x.astype(np.float64) for x in (case.q, case.k, case.v)),
                              **case.map(lambda x: x.astype(np.float64)).kwargs)
    scale = definition_scale(case.map(lambda x: x.astype(np.float64)), causal=True)
    assert_close(out, ref, scale, {"float16": 1e-2, "float32": 2e-4}[dtype], dtype)


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-STREAM-DECODE")
@pytest.mark.parametrize("explicit_logits", [True, False])
def test_streaming_in_random_pieces(rng, explicit_logits) -> None:
    n = 160
    case = draw_case(rng, n, d=6, dv=5, batch=(2,), explicit_logits=explicit_logits)
    cuts = [0, *sorted(rng.choice(np.arange(1, n - 3), 6, replace=False)), n - 2, n - 1, n]
    state, pieces = None, []
    for a, b in itertools.pairwise(cuts):
        piece = case.map(lambda x, a=a, b=b: x[..., a:b, :] if x.ndim == 3 else x[..., a:b])
        out, state = SMALL.attention(piece.q, piece.k, piece.v, state=state,
                                     return_state=True, **piece.kwargs)
        pieces.append(out)
    assert isinstance(state, zeros_ref.State) and state.length == n
    whole, ref_state = zeros_ref.attention(case.q, case.k, case.v, return_state=True,
                                           **case.kwargs)
    logits = case.logits
    if logits is None:
        logits = zeros_ref.deviation_logits(case.k)
    assert_close(np.concatenate(pieces, axis=-2), whole,
                 definition_scale(case, causal=True, logits=logits), TIGHT, "streamed")
    for field in ("running_max", "mean_offset", "normaliser", "kv", "key_sum"):
        np.testing.assert_allclose(getattr(state, field), getattr(ref_state, field),
                                   rtol=1e-11, atol=1e-12, err_msg=field)


@pytest.mark.req("ZS-ERR-EMPTY")
def test_empty_and_single_token(rng) -> None:
    case = draw_case(rng, 5, batch=(2,))
    _, state = SMALL.attention(case.q, case.k, case.v, return_state=True)
    empty = case.q[..., :0, :]
    out, same = SMALL.attention(empty, empty, case.v[..., :0, :], state=state,
                                return_state=True)
    assert out.shape == (2, 0, 3) and out.dtype == np.float64 and same is state
    _check(SMALL, draw_case(rng, 1, batch=(2,)), causal=True)


@pytest.mark.req("ZS-ERR-NONFINITE", "ZS-ERR-NONFINITE-V")
@pytest.mark.parametrize("where", ["v", "k", "logits"])
def test_nonfinite_value_stays_in_the_future(rng, where) -> None:
    case = draw_case(rng, 100, d=6, dv=5, batch=(2,))
    case.k = np.broadcast_to(case.k, case.q.shape).copy()  # row 1 must not share row 0's k
    clean = SMALL.attention(case.q, case.k, case.v, **case.kwargs)
    i = 45
    {"v": case.v, "k": case.k, "logits": case.logits}[where][0, i, ...] = np.nan
    with np.errstate(all="ignore"):
        out = SMALL.attention(case.q, case.k, case.v, **case.kwargs)
    np.testing.assert_allclose(out[0, :i], clean[0, :i], rtol=0, atol=1e-12)
    assert np.isnan(out[0, i:]).any(axis=-1).all()
    np.testing.assert_allclose(out[1], clean[1], rtol=0, atol=1e-12)


@pytest.mark.req("ZS-ERR-SHAPE", "ZS-ERR-STATE")
def test_errors_are_the_references(rng) -> None:
    case = draw_case(rng, 10)
    bad = [
        ((case.q, case.k[..., :3], case.v), {}),
        ((case.q, case.k, case.v), {"state": None, "return_state": True, "causal": False}),
        ((case.q, case.k, case.v), {"causal": 1}),
        ((case.q, case.k, case.v), {"first": True}),
    ]
    for args, kwargs in bad:
        with pytest.raises((TypeError, ValueError)) as expected:
            zeros_ref.attention(*args, **kwargs)
        with pytest.raises(expected.type, match=f"^{re.escape(str(expected.value))}$"):
            backend.attention(*args, **kwargs)
