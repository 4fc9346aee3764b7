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


def _head_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(sequences, padded tokens n) of every call of ragged heads (one per class)."""
    calls: list[tuple[int, int]] = []
    inner = varlen._ragged_heads

    def counting(backend, x, heads, *args, **kwargs):
        calls.append((heads.starts.size, heads.n))
        return inner(backend, x, heads, *args, **kwargs)

    monkeypatch.setattr(varlen, "_ragged_heads", counting)
    return calls


def test_decode_steps_of_4096_sequences_are_one_call(rng: np.random.Generator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """4,096 one-token decode steps, each from its own state: one call of ragged heads of
    one token for all lanes, equal to the reference's sequence-by-sequence definition."""
    backend = NumpyBackend(workers=1)
    s, rows, d = 4096, 2, 4
    _, states = zeros_ref.attention(*rng.normal(size=(3, s, rows, 3, d)), return_state=True)
    packed = zeros_ref.State.stack(np, [states.rows(slice(j, j + 1)).with_batch(np, (rows,))
                                        for j in range(s)])
    q, k, v = rng.normal(size=(3, rows, s, d))
    cu = _offsets([1] * s)
    calls, heads = _counted(backend, monkeypatch), _head_calls(monkeypatch)
    out, end = backend.attention(q, k, v, cu_seqlens=cu, state=packed, return_state=True)
    assert (calls, heads) == ([], [(s, 1)])
    want, want_end = zeros_ref.attention(q, k, v, cu_seqlens=cu, state=packed,
                                         return_state=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(end.kv, want_end.kv, rtol=0, atol=1e-12)
    assert end.length == want_end.length == tuple(n + 1 for n in packed.length)


def test_calls_follow_head_classes_and_slabs(rng: np.random.Generator,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences of l = r + k L tokens: the heads r of each class (up to C tokens, padded to
    the longest of them; then (c - 1) C < r <= c C, padded to c C) in one call, one call
    per distinct number of slabs k; every token computed once, padding at most C - 1
    tokens per head."""
    backend = NumpyBackend(chunk_size=8, slab_size=2, workers=1)  # L = 16
    lengths = [5, 0, 16, 21, 37, 5, 40, 3, 28, 14]
    cu = _offsets(lengths)
    q, k, v = rng.normal(size=(3, 1, sum(lengths), 4))
    calls, heads = _counted(backend, monkeypatch), _head_calls(monkeypatch)
    out = backend.attention(q, k, v, cu_seqlens=cu)
    # heads: 5, 5, 5, 8, 3, 5 (up to C = 8: padded to 8), and 12, 14 (the next class: to 16)
    assert sorted(heads) == [(2, 16), (6, 8)]
    slabs = sorted({n // 16 for n in lengths if n // 16})
    assert sorted(n for _, n in calls) == [16 * j for j in slabs]
    assert sum(lanes * n for lanes, n in calls) + sum(n % 16 for n in lengths) == sum(lengths)
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


def test_ragged_heads_the_frame_cannot_hold_take_the_exact_step(
        rng: np.random.Generator) -> None:
    """A head whose logits spread past what one frame holds (and one with a NaN) go to the
    reference's exact step with per-lane lengths; the other heads of their class stay on
    the fast path, and every output and state equals the reference's."""
    backend = NumpyBackend(chunk_size=8, slab_size=2, workers=1)  # L = 16
    lengths = [6, 5, 7, 21]
    cu = _offsets(lengths)
    q, k, v = rng.normal(size=(3, 2, sum(lengths), 4))
    s = rng.normal(size=(2, sum(lengths)))
    s[0, 6 + 3] = 1e4  # sequence 1, row 0: a spread of 1e4 in its head
    v[1, 11 + 2] = np.nan  # sequence 2, row 1: a NaN value in its head
    out, end = backend.attention(q, k, v, logits=s, cu_seqlens=cu, return_state=True)
    want, want_end = zeros_ref.attention(q, k, v, logits=s, cu_seqlens=cu, return_state=True)
    assert backend.last_paths["reference"] == 5 + 7
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    for name in ("running_max", "mean_offset", "normaliser", "kv", "key_sum"):
        np.testing.assert_allclose(getattr(end, name), getattr(want_end, name), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
