"""Streaming: a causal sequence run in pieces with the carried state (spec section 5)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import Case, assert_close, definition_scale, draw_case
from hypothesis import given, settings
from hypothesis import strategies as st

import zeros_ref

EXACT = 1e-12


def _piece(case: Case, a: int, b: int) -> tuple[tuple, dict]:
    """Arguments of the call on positions a..b-1 of `case`."""
    arrays = tuple(x[..., a:b, :] for x in (case.q, case.k, case.v))
    kwargs = {name: (g if np.ndim(g) == 0 else g[..., a:b]) for name, g in case.kwargs.items()
              if g is not None}
    return arrays, kwargs


def run_in_pieces(case: Case, cuts: list[int], chunk_size: int = 64) -> tuple[np.ndarray, object]:
    """Outputs of `case` run piece by piece, cut at the sorted positions `cuts`."""
    n = case.q.shape[-2]
    bounds = [0, *cuts, n]
    state, outputs = None, []
    for a, b in itertools.pairwise(bounds):
        arrays, kwargs = _piece(case, a, b)
        out, state = zeros_ref.attention(
            *arrays, state=state, return_state=True, chunk_size=chunk_size, **kwargs
        )
        assert out.shape[-2] == b - a
        outputs.append(out)
    return np.concatenate(outputs, axis=-2), state


def scale_of(case: Case) -> np.ndarray:
    s = case.logits if case.logits is not None else zeros_ref.deviation_logits(case.k)
    return definition_scale(case, causal=True, logits=s)


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-LOG-DEFAULT")
@settings(deadline=None, max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 90),
    explicit_logits=st.booleans(),
    gates=st.sampled_from(["random", "scalar", "default"]),
    chunk_size=st.sampled_from([1, 4, 16, 64]),
    data=st.data(),
)
def test_pieces_equal_one_call(
    seed: int, n: int, explicit_logits: bool, gates: str, chunk_size: int, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts"))
    rng = np.random.default_rng(seed)
    case = draw_case(rng, n, batch=(2, 1), explicit_logits=explicit_logits, gates=gates,
                     logit_scale=5.0)
    whole = zeros_ref.attention(case.q, case.k, case.v, chunk_size=chunk_size, **case.kwargs)
    pieces, _ = run_in_pieces(case, cuts, chunk_size)
    assert pieces.shape == whole.shape
    assert_close(pieces, whole, scale_of(case), EXACT, f"cuts {cuts}")


@pytest.mark.req("ZS-STREAM-PIECES")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
def test_continuing_a_streamed_state_equals_continuing_one_call(
    rng: np.random.Generator, explicit_logits: bool
) -> None:
    """The final state behaves as the state of one call: both continue the sequence alike."""
    case = draw_case(rng, 100, batch=(3,), explicit_logits=explicit_logits, logit_scale=8.0)
    m = 70
    head = Case(*(x[..., :m, :] for x in (case.q, case.k, case.v)),
                None if case.logits is None else case.logits[..., :m],
                {name: g[..., :m] for name, g in case.gates.items()})
    _, streamed = run_in_pieces(head, [5, 6, 40, 41], chunk_size=16)
    _, whole = zeros_ref.attention(
        head.q, head.k, head.v, return_state=True, **head.kwargs
    )
    assert streamed.length == whole.length == m
    arrays, kwargs = _piece(case, m, 100)
    after_streamed = zeros_ref.attention(*arrays, state=streamed, **kwargs)
    after_whole = zeros_ref.attention(*arrays, state=whole, **kwargs)
    reference = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)[..., m:, :]
    scale = scale_of(case)[..., m:]
    assert_close(after_streamed, reference, scale, EXACT, "continued from streamed state")
    assert_close(after_whole, reference, scale, EXACT, "continued from one-call state")


@pytest.mark.req("ZS-STREAM-DECODE", "ZS-STREAM-PIECES")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
@pytest.mark.parametrize("prefill", [0, 1, 33, 64])
def test_decode_steps_equal_prefill(
    rng: np.random.Generator, prefill: int, explicit_logits: bool
) -> None:
    n = prefill + 20
    case = draw_case(rng, n, batch=(2,), explicit_logits=explicit_logits, logit_scale=5.0)
    whole = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)
    stepped, _ = run_in_pieces(case, list(range(max(prefill, 1), n)), chunk_size=16)
    assert_close(stepped, whole, scale_of(case), EXACT, f"prefill {prefill} + decode")


def _assert_same_state(a: zeros_ref.State, b: zeros_ref.State) -> None:
    assert a.length == b.length
    for name in ("running_max", "mean_offset", "normaliser", "kv", "key_sum"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-ERR-EMPTY")
@pytest.mark.parametrize("explicit_logits", [True, False], ids=["logits", "default-logits"])
def test_empty_piece_returns_empty_output_and_same_state(
    rng: np.random.Generator, explicit_logits: bool
) -> None:
    case = draw_case(rng, 12, d=4, dv=3, batch=(2,), explicit_logits=explicit_logits)
    _, state = zeros_ref.attention(*_piece(case, 0, 7)[0], return_state=True,
                                   **_piece(case, 0, 7)[1])
    arrays, kwargs = _piece(case, 7, 7)
    out, after = zeros_ref.attention(*arrays, state=state, return_state=True, **kwargs)
    assert out.shape == (2, 0, 3) and out.dtype == np.float64
    _assert_same_state(after, state)
    # Continuing after the empty piece equals one call.
    arrays, kwargs = _piece(case, 7, 12)
    rest = zeros_ref.attention(*arrays, state=after, **kwargs)
    whole = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)
    assert_close(rest, whole[..., 7:, :], scale_of(case)[..., 7:], EXACT, "after empty piece")


@pytest.mark.req("ZS-STREAM-PIECES")
def test_empty_first_piece_gives_empty_state(rng: np.random.Generator) -> None:
    case = draw_case(rng, 9, batch=(2,))
    arrays, kwargs = _piece(case, 0, 0)
    out, state = zeros_ref.attention(*arrays, return_state=True, **kwargs)
    assert out.shape == (2, 0, 3)
    assert state.length == 0
    rest = zeros_ref.attention(case.q, case.k, case.v, state=state, **case.kwargs)
    whole = zeros_ref.attention(case.q, case.k, case.v, **case.kwargs)
    np.testing.assert_array_equal(rest, whole)


@pytest.fixture
def prefix_state(rng: np.random.Generator) -> zeros_ref.State:
    """The state after 5 tokens of a (2, 3)-batched sequence with D = 4, Dv = 3."""
    q, k = rng.normal(size=(2, 2, 3, 5, 4))
    v = rng.normal(size=(2, 3, 5, 3))
    return zeros_ref.attention(q, k, v, return_state=True)[1]


@pytest.mark.req("ZS-ERR-STATE")
@pytest.mark.parametrize(
    ("batch", "d", "dv"),
    [((3,), 4, 3), ((2, 1), 4, 3), ((4, 2, 3), 4, 3), ((2, 3), 5, 3), ((2, 3), 4, 2)],
    ids=["batch-short", "batch-one", "batch-long", "D", "Dv"],
)
def test_state_that_does_not_fit_is_rejected(
    rng: np.random.Generator, prefix_state: zeros_ref.State, batch: tuple, d: int, dv: int
) -> None:
    q, k = rng.normal(size=(2, *batch, 2, d))
    v = rng.normal(size=(*batch, 2, dv))
    with pytest.raises(ValueError, match="`state`"):
        zeros_ref.attention(q, k, v, state=prefix_state)


@pytest.mark.req("ZS-ERR-STATE")
def test_state_of_other_dtype_or_type_is_rejected(
    rng: np.random.Generator, prefix_state: zeros_ref.State
) -> None:
    q, k = rng.normal(size=(2, 2, 3, 2, 4))
    v = rng.normal(size=(2, 3, 2, 3))
    with pytest.raises(TypeError, match="`state`"):
        zeros_ref.attention(*(x.astype(np.float32) for x in (q, k, v)), state=prefix_state)
    for wrong in ({"length": 5}, prefix_state.kv, 5):
        with pytest.raises(TypeError, match="`state`"):
            zeros_ref.attention(q, k, v, state=wrong)
    # The fitting state is accepted.
    assert zeros_ref.attention(q, k, v, state=prefix_state).shape == (2, 3, 2, 3)


@pytest.mark.req("ZS-ERR-STATE")
def test_state_needs_causal(rng: np.random.Generator, prefix_state: zeros_ref.State) -> None:
    q, k = rng.normal(size=(2, 2, 3, 2, 4))
    v = rng.normal(size=(2, 3, 2, 3))
    with pytest.raises(ValueError, match="`state`"):
        zeros_ref.attention(q, k, v, state=prefix_state, causal=False)
    with pytest.raises(ValueError, match="`return_state`"):
        zeros_ref.attention(q, k, v, return_state=True, causal=False)
