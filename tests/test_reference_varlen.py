"""Packed sequences in the reference (spec 5.2): `cu_seqlens` in `attention` and
`explicit_attention`, per-sequence states, and the errors that name the argument."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from conftest import assert_close, from_numpy, library_name, to_numpy

import zeros_ref
from zeros_conformance import output_scale
from zeros_ref import State

LENGTHS = [0, 1, 15, 16, 17, 0, 40, 3]


def _inputs(rng: np.random.Generator, t: int, *, explicit_logits: bool = True) -> dict:
    q, k, v = rng.normal(size=(3, 2, t, 5))
    gates = rng.uniform(-1, 2, size=(3, 2, t))
    logits = rng.normal(size=(2, t)) * 3 if explicit_logits else None
    return {"q": q, "k": k, "v": v, "logits": logits, "first": gates[0], "higher": gates[1],
            "zero": gates[2]}


def _piece(inputs: dict, a: int, b: int) -> dict:
    return {name: None if x is None else x[:, a:b] for name, x in inputs.items()}


def _separately(fn: Any, inputs: dict, offsets: list[int], **options: Any) -> np.ndarray:
    return np.concatenate([fn(**_piece(inputs, a, b), **options)
                           for a, b in pairwise(offsets)], axis=-2)


@pytest.mark.req("ZS-VARLEN-EQUAL")
@pytest.mark.parametrize("explicit_logits", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_packed_equals_separate_calls(rng, causal: bool, explicit_logits: bool) -> None:
    offsets = list(np.cumsum([0, *LENGTHS]))
    inputs = _inputs(rng, offsets[-1], explicit_logits=explicit_logits)
    expected = _separately(zeros_ref.attention, inputs, offsets, causal=causal)
    cu = np.asarray(offsets)
    for fn in (zeros_ref.attention, zeros_ref.explicit_attention):
        out = fn(**inputs, causal=causal, cu_seqlens=cu)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12, err_msg=fn.__name__)


@pytest.mark.req("ZS-VARLEN-EQUAL", "ZS-DTYPE-OUTPUT")
def test_every_library(xp: Any, rng) -> None:
    offsets = [0, 7, 7, 30]
    inputs = _inputs(rng, 30)
    args = {n: from_numpy(xp, x, "float32") for n, x in inputs.items()}
    cu = from_numpy(xp, np.asarray(offsets), "int64")
    out = zeros_ref.attention(**args, cu_seqlens=cu)
    assert library_name(out) == library_name(args["q"]) and out.dtype == args["q"].dtype
    seen = {n: to_numpy(x).astype(np.float64) for n, x in args.items()}
    expected = _separately(zeros_ref.attention, seen, offsets)
    scale = np.concatenate([_scale(_piece(seen, a, b)) for a, b in pairwise(offsets)], axis=-1)
    assert_close(to_numpy(out), expected, scale, 2e-4, library_name(out))


def _scale(inputs: dict) -> np.ndarray:
    """The causal output scale of spec 7.1 of one sequence's inputs."""
    gates = (inputs[g] for g in ("first", "higher", "zero"))
    return output_scale(inputs["v"], inputs["logits"], *gates, causal=True)


@pytest.mark.req("ZS-VARLEN-STATE")
@pytest.mark.parametrize("explicit_logits", [True, False])
def test_per_sequence_states_continue_prefill_and_decode(rng, explicit_logits: bool) -> None:
    first, then = [5, 0, 20, 1, 0], [1, 0, 1, 9, 3]
    whole = [_inputs(rng, a + b, explicit_logits=explicit_logits) for a, b in zip(first, then)]
    joined = {n: None if whole[0][n] is None else
              np.concatenate([w[n][:, :a] for w, a in zip(whole, first)], axis=1)
              for n in whole[0]}
    rest = {n: None if whole[0][n] is None else
            np.concatenate([w[n][:, a:] for w, a in zip(whole, first)], axis=1)
            for n in whole[0]}
    _, states = zeros_ref.attention(**joined, cu_seqlens=np.cumsum([0, *first]),
                                    return_state=True)
    assert isinstance(states, State) and states.length == tuple(first)
    assert states.kv.shape == (5, 2, 3, 5, 5)
    out, end = zeros_ref.attention(**rest, cu_seqlens=np.cumsum([0, *then]), state=states,
                                   return_state=True)
    expected = np.concatenate([zeros_ref.attention(**w)[:, a:] for w, a in zip(whole, first)],
                              axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert end.length == tuple(a + b for a, b in zip(first, then))
    empty = first.index(0)  # an empty sequence in both calls keeps its initial state
    assert end.sequence(1).length == 0 and np.all(end.sequence(empty).kv == 0)


def test_no_sequences() -> None:
    x = np.zeros((2, 0, 4))
    out, states = zeros_ref.attention(x, x, x, cu_seqlens=np.array([0]), return_state=True)
    assert out.shape == (2, 0, 4) and states.length == () and states.kv.shape == (0, 2, 3, 4, 4)


@pytest.mark.req("ZS-ERR-VARLEN")
@pytest.mark.parametrize(("cu", "kind", "message"), [
    (np.array([0.0, 10.0]), TypeError, "integer dtype"),
    (np.array([[0, 10]]), ValueError, "1-D"),
    (np.array([], dtype=np.int64), ValueError, "1-D"),
    (np.array([1, 10]), ValueError, "start at 0"),
    (np.array([0, 6, 4, 10]), ValueError, "must not decrease; got 6 then 4"),
    (np.array([0, 4, 9]), ValueError, "end at the length T = 10"),
    ([0, 10], TypeError, "cu_seqlens"),
])
def test_bad_offsets_are_named(cu: Any, kind: type, message: str) -> None:
    x = np.ones((2, 10, 4))
    with pytest.raises(kind, match=r"`cu_seqlens`") as raised:
        zeros_ref.attention(x, x, x, cu_seqlens=cu)
    assert message in str(raised.value)
    with pytest.raises(kind, match=r"`cu_seqlens`"):
        zeros_ref.explicit_attention(x, x, x, cu_seqlens=cu)


@pytest.mark.req("ZS-ERR-VARLEN", "ZS-ERR-STATE")
def test_states_for_other_sequences_are_rejected() -> None:
    x = np.ones((2, 10, 4))
    _, three = zeros_ref.attention(x, x, x, cu_seqlens=np.array([0, 2, 5, 10]),
                                   return_state=True)
    _, per_row = zeros_ref.attention(x, x, x, return_state=True)
    two = np.array([0, 5, 10])
    for state, message in ((three, "states of 3 sequences but `cu_seqlens` gives 2"),
                           (per_row, "one per sequence")):
        with pytest.raises(ValueError, match="`state`") as raised:
            zeros_ref.attention(x, x, x, cu_seqlens=two, state=state)
        assert message in str(raised.value)
    with pytest.raises(ValueError, match="pass the `cu_seqlens` it was made for"):
        zeros_ref.attention(x, x, x, state=three)
    with pytest.raises(ValueError, match="causal=True"):
        zeros_ref.attention(x, x, x, cu_seqlens=two, causal=False, return_state=True)


@pytest.mark.req("ZS-LAYER-VARLEN")
@pytest.mark.parametrize("causal", [True, False])
def test_layer_restarts_every_sequence(rng, causal: bool) -> None:
    """RoPE positions, prior means and the core restart at each packed sequence."""
    params = zeros_ref.random_layer_params(8, 2)
    offsets = [0, 5, 5, 17, 40]
    x = rng.normal(size=(2, 40, 8))
    out = zeros_ref.layer(x, params, heads=2, causal=causal, cu_seqlens=np.asarray(offsets))
    expected = np.concatenate([zeros_ref.layer(x[:, a:b], params, heads=2, causal=causal)
                               for a, b in pairwise(offsets)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)


@pytest.mark.req("ZS-LAYER-VARLEN")
def test_layer_states_per_sequence(rng) -> None:
    params = zeros_ref.random_layer_params(8, 2)
    first, then = [5, 0, 12, 23], [1, 0, 4, 1]
    x = [rng.normal(size=(2, a + b, 8)) for a, b in zip(first, then)]
    _, states = zeros_ref.layer(np.concatenate([w[:, :a] for w, a in zip(x, first)], axis=1),
                                params, heads=2, cu_seqlens=np.cumsum([0, *first]),
                                return_state=True)
    assert states.length == tuple(first) and states.u_sum.shape == (4, 2, 2, 4)
    out = zeros_ref.layer(np.concatenate([w[:, a:] for w, a in zip(x, first)], axis=1), params,
                          heads=2, cu_seqlens=np.cumsum([0, *then]), state=states)
    expected = np.concatenate([zeros_ref.layer(w, params, heads=2)[:, a:]
                               for w, a in zip(x, first)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="one state per sequence of `cu_seqlens` \\(2\\)"):
        zeros_ref.layer(x[0], params, heads=2, cu_seqlens=np.array([0, 2, 6]), state=states)
