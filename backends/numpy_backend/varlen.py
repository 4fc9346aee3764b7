"""Packed calls (spec 5.2, ``cu_seqlens``): the sequences of a packed call as rows of the
GEMM form, in a few batched calls rather than one per sequence.

The slab form computes R rows of n tokens each, every row from its own state (the rows of a
call may hold different counts: `frames.counts`). A packed call becomes such calls: every
(sequence, row of *B) pair is a *lane*, and a sequence of l tokens is cut as
``l = r + k L`` (L = chunk_size * slab_size, 0 <= r < L) into its *head* of r tokens and k
whole slabs. Then

1. the heads of all sequences, grouped by r: one call per distinct head length (at most L
   of them, whatever the number of sequences), each lane from its sequence's initial state;
2. slab j of every sequence with more than j slabs: one call of L tokens per j, every lane
   from the state its previous piece left.

So S sequences cost at most L + max(l) / L calls, the tokens are each computed once, and the
work follows the tokens, not the longest sequence (ZS-ON-VARLEN). The lanes' states between
calls are kept only for sequences that go on (at most T / L of them), and for all when they
are returned.

Bidirectional calls (spec 4.3) group the sequences by length class (lengths in
(2^(j-1), 2^j]) and pad each class to its longest, the padding masked out of the sums
(`bidirectional.bidirectional_rows` with per-row lengths): at most twice the tokens.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from zeros_ref.kernel import Inputs, State, check_default_logits

from .bidirectional import bidirectional_rows

__all__ = ["packed_bidirectional", "packed_causal"]


def _lanes(seqs: np.ndarray, rows: int) -> np.ndarray:
    """The lanes (sequence j, row r) -> j R + r of the sequences `seqs`, sequence-major."""
    return (seqs[:, None] * rows + np.arange(rows)).reshape(-1)


def _gather(x: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Tokens (g, n) of x (R, T, ...) as lanes (g R, n, ...)."""
    picked = np.swapaxes(x[:, tokens], 0, 1)  # (g, R, n, ...)
    return picked.reshape(-1, *picked.shape[2:])


def _scatter(out: np.ndarray, tokens: np.ndarray, lanes: np.ndarray) -> None:
    """Write the lanes' outputs (g R, n, Dv) to their tokens (g, n) of out (R, T, Dv)."""
    g, n = tokens.shape
    out[:, tokens] = np.swapaxes(lanes.reshape(g, -1, n, lanes.shape[-1]), 0, 1)


def _put(store: State, index: np.ndarray, state: State) -> None:
    """Rows `index` of the per-lane `store` (its arrays written in place) set to `state`."""
    store.length[index] = state.length
    for name in ("running_max", "mean_offset", "normaliser", "kv", "key_sum"):
        getattr(store, name)[index] = getattr(state, name)


def packed_causal(backend: Any, inp: Inputs, start: State, *,
                  return_state: bool) -> tuple[np.ndarray, State | None]:
    """Outputs (R, T, Dv) and, with `return_state`, the final states (leading axes (S, R)) of
    a packed causal call whose validated inputs are `inp` and initial states `start`
    (leading axes (S, *B)). `backend` is the `NumpyBackend` (its `causal_rows`)."""
    offsets = np.asarray(inp.offsets)
    lengths = np.diff(offsets)
    count, rows = lengths.shape[0], math.prod(inp.batch)
    t, d, dv = inp.n, inp.q.shape[-1], inp.v.shape[-1]
    q, k = inp.q.reshape(rows, t, d), inp.k.reshape(rows, t, d)
    v = inp.v.reshape(rows, t, dv)
    gates = tuple(np.broadcast_to(g, (*inp.batch, t)).reshape(rows, t)
                  for g in (inp.first, inp.higher, inp.zero))
    logits = None if inp.logits is None else inp.logits.reshape(rows, t)
    track_g = return_state or not np.array_equal(gates[0], gates[1])
    per_lane = np.repeat(np.asarray(start.length, dtype=np.int64), rows)
    init = replace(start.with_batch(np, (count * rows,)), length=per_lane)
    slab = backend.chunk_size * backend.slab_size
    whole, head = lengths // slab, lengths % slab  # k slabs after a head of r tokens
    going = np.flatnonzero(whole > 0)  # sequences with slabs after their head
    slot = np.full(count, -1)
    slot[going] = np.arange(going.size)
    store = init.rows(_lanes(going, rows))  # their lanes' states between calls (copies)
    finals = init.rows(np.arange(count * rows)) if return_state else None
    out = np.empty((rows, t, dv), inp.compute_dtype)

    def run(tokens: np.ndarray, state: State) -> State:
        part, end = backend.causal_rows(
            _gather(q, tokens), _gather(k, tokens), _gather(v, tokens),
            None if logits is None else _gather(logits, tokens),
            tuple(_gather(g, tokens) for g in gates), state,
            spans=list(backend._spans(tokens.shape[1])), return_state=True, track_g=track_g)
        _scatter(out, tokens, part)
        return end

    def finish(seqs: np.ndarray, end: State, done: np.ndarray) -> None:
        """Keep the states of the lanes of `seqs` (in the order of `end`) that go on, and
        the final ones of those that are `done`."""
        going_on = (slot[seqs] >= 0) & ~done
        if going_on.any():
            _put(store, _lanes(slot[seqs[going_on]], rows),
                 end.rows(_lanes(np.flatnonzero(going_on), rows)))
        if finals is not None and done.any():
            _put(finals, _lanes(seqs[done], rows), end.rows(_lanes(np.flatnonzero(done), rows)))

    for r in np.unique(head[head > 0]):  # 1. the heads, one call per length
        seqs = np.flatnonzero(head == r)
        tokens = offsets[seqs][:, None] + np.arange(r)
        end = run(tokens, init.rows(_lanes(seqs, rows)))
        finish(seqs, end, whole[seqs] == 0)
    for j in range(int(whole.max(initial=0))):  # 2. slab j of every sequence that has it
        seqs = np.flatnonzero(whole > j)
        tokens = (offsets[seqs] + head[seqs] + j * slab)[:, None] + np.arange(slab)
        end = run(tokens, store.rows(_lanes(slot[seqs], rows)))
        finish(seqs, end, whole[seqs] == j + 1)
    if finals is None:
        return out, None
    counts = tuple(int(n) for n in np.asarray(start.length, dtype=np.int64) + lengths)
    return out, replace(finals.with_batch(np, (count, rows)), length=counts)


def packed_bidirectional(backend: Any, inp: Inputs) -> np.ndarray:
    """Bidirectional outputs (R, T, Dv) of a packed call: the sequences of each length class
    padded to its longest, the padding masked (module docstring)."""
    offsets = np.asarray(inp.offsets)
    lengths = np.diff(offsets)
    rows, t = math.prod(inp.batch), inp.n
    d, dv = inp.q.shape[-1], inp.v.shape[-1]
    q, k = inp.q.reshape(rows, t, d), inp.k.reshape(rows, t, d)
    v = inp.v.reshape(rows, t, dv)
    gates = tuple(np.broadcast_to(g, (*inp.batch, t)).reshape(rows, t)
                  for g in (inp.first, inp.higher, inp.zero))
    out = np.empty((rows, t, dv), inp.compute_dtype)
    filled = lengths > 0
    classes = np.zeros_like(lengths)
    classes[filled] = np.ceil(np.log2(lengths[filled])).astype(lengths.dtype)
    for c in np.unique(classes[filled]):
        seqs = np.flatnonzero(filled & (classes == c))
        n = int(lengths[seqs].max())
        position = np.arange(n)
        valid = position < lengths[seqs][:, None]  # (g, n)
        tokens = np.where(valid, offsets[seqs][:, None] + position, offsets[seqs][:, None])
        mask = np.repeat(valid, rows, axis=0)[..., None]  # lanes (g R, n, 1)
        kl = np.where(mask, _gather(k, tokens), 0.0)
        size = np.repeat(lengths[seqs], rows)  # (g R,) each lane's length
        if inp.logits is None:  # ZS-LOG-DEFAULT over the sequence, n = its length
            kbar = np.sum(kl, axis=1) / (1.0 + size)[:, None]
            s = -np.einsum("lnd,ld->ln", kl, kbar) / math.sqrt(d)
            check_default_logits(np, s, kl)
        else:
            s = _gather(inp.logits.reshape(rows, t), tokens)
        part = np.empty((seqs.size * rows, n, dv), inp.compute_dtype)
        bidirectional_rows(_gather(q, tokens), kl, _gather(v, tokens),
                           np.where(mask[..., 0], s, -np.inf),
                           tuple(_gather(g, tokens) for g in gates), part,
                           backend.chunk_size * backend.slab_size, lengths=size)
        g = seqs.size
        lanes = np.swapaxes(part.reshape(g, rows, n, dv), 0, 1)  # (R, g, n, Dv)
        out[:, tokens[valid]] = lanes[:, valid]
    return out
