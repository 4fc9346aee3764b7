"""The NumPy backend's packed calls (spec 5.2): the sequences as lanes of a few batched calls,
never one call per sequence. Agreement with the reference is the suite's (ZS-VARLEN-*, the
full profile runs in tests/test_numpy_backend.py); here are the properties of the method."""

from __future__ import annotations

import numpy as np
import pytest

import zeros_ref
from zeros_backends.numpy_backend import NumpyBackend, varlen


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _counted(backend: NumpyBackend,
             monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rows, tokens per row) of every batched call the backend makes (`causal_rows`)."""
    calls: list[tuple[int, int]] = []
    inner = backend.causal_rows

    def counting(rows, *args, **kwargs):
        calls.append(rows.shape[:2])
        return inner(rows, *args, **kwargs)

    monkeypatch.setattr(backend, "causal_rows", counting)
    return calls


def _short_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lane count of every batched exact step of heads shorter than a chunk."""
    calls: list[int] = []
    inner = varlen._short_heads

    def counting(backend, x, inp, starts, lengths, state):
        calls.append(starts.size)
        return inner(backend, x, inp, starts, lengths, state)

    monkeypatch.setattr(varlen, "_short_heads", counting)
    return calls


def test_decode_steps_of_4096_sequences_are_one_call(rng: np.random.Generator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """4,096 one-token decode steps, each from its own state: one batched exact step of all
    lanes, equal to the reference's sequence-by-sequence definition."""
    backend = NumpyBackend(workers=1)
    s, rows, d = 4096, 2, 4
    _, states = zeros_ref.attention(*rng.normal(size=(3, s, rows, 3, d)), return_state=True)
    packed = zeros_ref.State.stack(np, [states.rows(slice(j, j + 1)).with_batch(np, (rows,))
                                        for j in range(s)])
    q, k, v = rng.normal(size=(3, rows, s, d))
    cu = _offsets([1] * s)
    calls, short = _counted(backend, monkeypatch), _short_calls(monkeypatch)
    out, end = backend.attention(q, k, v, cu_seqlens=cu, state=packed, return_state=True)
    assert (calls, short) == ([], [s])
    want, want_end = zeros_ref.attention(q, k, v, cu_seqlens=cu, state=packed,
                                         return_state=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(end.kv, want_end.kv, rtol=0, atol=1e-12)
    assert end.length == want_end.length == tuple(n + 1 for n in packed.length)


def test_calls_follow_head_lengths_and_slabs(rng: np.random.Generator,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences of l = r + k L tokens: the heads shorter than a chunk in one exact step,
    one call per other distinct head length r, one per distinct number of slabs k; every
    token computed once."""
    backend = NumpyBackend(chunk_size=8, slab_size=2, workers=1)  # L = 16
    lengths = [5, 0, 16, 21, 37, 5, 40, 3, 28]
    cu = _offsets(lengths)
    q, k, v = rng.normal(size=(3, 1, sum(lengths), 4))
    calls, short = _counted(backend, monkeypatch), _short_calls(monkeypatch)
    out = backend.attention(q, k, v, cu_seqlens=cu)
    heads = sorted({n % 16 for n in lengths if n % 16 >= 8})
    slabs = sorted({n // 16 for n in lengths if n // 16})
    assert short == [sum(0 < n % 16 < 8 for n in lengths)]
    assert sorted(n for _, n in calls) == sorted([*heads, *(16 * j for j in slabs)])
    tokens = sum(n % 16 for n in lengths if n % 16 < 8)
    assert sum(lanes * n for lanes, n in calls) + tokens == sum(lengths)
    np.testing.assert_allclose(out, zeros_ref.attention(q, k, v, cu_seqlens=cu), rtol=0,
                               atol=1e-12)


def test_rows_of_different_counts_split_and_merge() -> None:
    """A state whose `length` is a per-row array keeps it with its rows."""
    _, st = zeros_ref.attention(*np.ones((3, 4, 2, 3)), return_state=True)
    st = zeros_ref.State(length=np.array([1, 2, 3, 4]), running_max=st.running_max,
                         mean_offset=st.mean_offset, normaliser=st.normaliser, kv=st.kv,
                         key_sum=st.key_sum)
    parts = [(np.array([0, 3]), st.rows(np.array([0, 3]))), (np.array([1, 2]),
                                                              st.rows(np.array([1, 2])))]
    assert parts[0][1].length.tolist() == [1, 4]
    assert zeros_ref.State.merge(parts).length.tolist() == [1, 2, 3, 4]
    assert st.with_batch(np, (2, 2)).length.shape == (2, 2)
