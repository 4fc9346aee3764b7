"""The reference's merge of states (spec 5.3) on every array library: the state of a
concatenation from its pieces' states, associative, with the empty state as identity."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from conftest import from_numpy, to_numpy

import zeros_ref

FIELDS = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")


def _piece_states(xp: Any, x: dict[str, np.ndarray], cuts: list[int]) -> list[zeros_ref.State]:
    """The states of the pieces between `cuts` (on the token axis), each from empty."""
    states = []
    for a, z in pairwise(cuts):
        piece = [from_numpy(xp, x[name][..., a:z, :]) for name in ("q", "k", "v")]
        _, st = zeros_ref.attention(*piece, logits=from_numpy(xp, x["s"][..., a:z]),
                                    return_state=True)
        states.append(st)
    return states


def _assert_states_close(got: zeros_ref.State, want: zeros_ref.State, rtol: float) -> None:
    assert got.length == want.length
    for name in FIELDS:
        np.testing.assert_allclose(to_numpy(getattr(got, name)), to_numpy(getattr(want, name)),
                                   rtol=rtol, atol=rtol, err_msg=name)


def _inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    q, k, v = rng.normal(size=(3, 2, n, 4))
    return {"q": q, "k": k, "v": v, "s": 3 * rng.normal(size=(2, n))}


@pytest.mark.req("ZS-STREAM-MERGE")
@pytest.mark.parametrize("shift", [0.0, 1e4, -1e4])
def test_merge_of_pieces_is_the_state_of_the_whole(xp: Any, rng: np.random.Generator,
                                                   shift: float) -> None:
    """Pieces (an empty one among them) merged at once, in halves and nested to the right
    give the state of one call, slot by slot, also when one piece's logits sit 1e4 away."""
    x = _inputs(rng, 90)
    x["s"][:, 40:61] += shift
    cuts = [0, 17, 40, 40, 61, 90]
    states = _piece_states(xp, x, cuts)
    whole = _piece_states(xp, x, [0, 90])[0]
    right = states[-1]
    for st in reversed(states[:-1]):
        right = zeros_ref.merge_states([st, right])
    for merged in (zeros_ref.merge_states(states),
                   zeros_ref.merge_states([zeros_ref.merge_states(states[:3]),
                                           zeros_ref.merge_states(states[3:])]), right):
        _assert_states_close(merged, whole, rtol=1e-11)


def test_the_empty_state_is_the_identity(rng: np.random.Generator) -> None:
    x = _inputs(rng, 12)
    (st,) = _piece_states(np, x, [0, 12])
    (empty,) = _piece_states(np, x, [5, 5])
    for merged in (zeros_ref.merge_states([empty, st]), zeros_ref.merge_states([st, empty]),
                   zeros_ref.merge_states([st])):
        _assert_states_close(merged, st, rtol=0.0)


def test_packed_states_merge_sequence_by_sequence(rng: np.random.Generator) -> None:
    """Two packed calls of the same sequences (the second continuing nothing): their merge
    is the state of each sequence's two pieces joined."""
    x = _inputs(rng, 30)
    first, second = np.array([0, 4, 4, 12]), np.array([0, 7, 9, 18])
    a = zeros_ref.attention(x["q"][:, :12], x["k"][:, :12], x["v"][:, :12],
                            logits=x["s"][:, :12], cu_seqlens=first, return_state=True)[1]
    b = zeros_ref.attention(x["q"][:, 12:], x["k"][:, 12:], x["v"][:, 12:],
                            logits=x["s"][:, 12:], cu_seqlens=second, return_state=True)[1]
    merged = zeros_ref.merge_states([a, b])
    for j in range(3):
        pieces = [(first[j], first[j + 1]), (12 + second[j], 12 + second[j + 1])]
        index = np.concatenate([np.arange(p, z) for p, z in pieces])
        whole = zeros_ref.attention(x["q"][:, index], x["k"][:, index], x["v"][:, index],
                                    logits=x["s"][:, index], return_state=True)[1]
        _assert_states_close(merged.sequence(j), whole, rtol=1e-12)


def test_bad_states_are_named(rng: np.random.Generator) -> None:
    x = _inputs(rng, 8)
    (st,) = _piece_states(np, x, [0, 8])
    with pytest.raises(ValueError, match="`states`"):
        zeros_ref.merge_states([])
    other = zeros_ref.attention(*rng.normal(size=(3, 3, 4, 4)), return_state=True)[1]
    with pytest.raises(ValueError, match=r"`states\[1\]`"):
        zeros_ref.merge_states([st, other])
    with pytest.raises(TypeError, match=r"`states\[1\]`"):
        zeros_ref.merge_states([st, "state"])
