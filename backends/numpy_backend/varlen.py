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
from typing import Any, NamedTuple

import numpy as np

from zeros_ref.kernel import Inputs, State, causal_step, check_default_logits

from .bidirectional import bidirectional_rows
from .logits import causal_logits
from .paths import REFERENCE
from .rows import Block

__all__ = ["packed_bidirectional", "packed_causal"]


def _lanes(index: np.ndarray, rows: int) -> np.ndarray:
    """The lanes (sequence index[i], row r) -> index[i] R + r, sequence-major: the order of
    `Lanes` and of the per-lane states."""
    return (index[:, None] * rows + np.arange(rows)).reshape(-1)


class _Packed(NamedTuple):
    """A packed call's arrays, rows flattened: q, k (R, T, D); v and out (R, T, Dv); logits
    (R, T) or None; gates (R, T) each."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None
    gates: tuple[np.ndarray, ...]
    out: np.ndarray


class Lanes:
    """The lanes of one call of a packed call (a `rows.Rows` source): lane ``i R + r`` is
    row r of the call's sequence i, whose n tokens start at ``starts[i]`` of the packed
    arrays. A block of lanes of one sequence is a view of them (its rows, its tokens), and
    its outputs are written in place; a block across sequences is gathered (and scattered
    back)."""

    def __init__(self, x: _Packed, starts: np.ndarray, n: int) -> None:
        self.x, self.starts, self.n = x, starts, n
        rows = x.q.shape[0]
        self.shape = (starts.shape[0] * rows, n, x.q.shape[-1], x.v.shape[-1])
        self.align = rows  # the lanes of one sequence

    def _split(self, lanes: slice) -> tuple[int, slice] | None:
        """(token start, rows) where the lanes are rows of one sequence, else None."""
        rows = self.x.q.shape[0]
        first, last = lanes.start // rows, (lanes.stop - 1) // rows
        if first != last:
            return None
        return int(self.starts[first]), slice(lanes.start % rows, (lanes.stop - 1) % rows + 1)

    def _index(self, lanes: slice) -> tuple[np.ndarray, np.ndarray]:
        """Rows (b, 1) and tokens (b, n) of the lanes, for a gather."""
        index = np.arange(lanes.start, lanes.stop)
        rows = self.x.q.shape[0]
        return (index % rows)[:, None], self.starts[index // rows][:, None] + np.arange(self.n)

    def take(self, lanes: slice) -> Block:
        x, split = self.x, self._split(lanes)
        if split is not None:  # views
            a, rows = split
            key: tuple[Any, Any] = (rows, slice(a, a + self.n))
        else:  # a gather
            key = self._index(lanes)
        return Block(x.q[key], x.k[key], x.v[key], None if x.logits is None else x.logits[key],
                     tuple(g[key] for g in x.gates))

    def output(self, lanes: slice) -> np.ndarray:
        split = self._split(lanes)
        if split is not None:
            a, rows = split
            return self.x.out[rows, a:a + self.n]
        return np.empty((lanes.stop - lanes.start, self.n, self.shape[3]), self.x.out.dtype)

    def put(self, lanes: slice, out: np.ndarray) -> None:
        if self._split(lanes) is None:
            self.x.out[self._index(lanes)] = out


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
    gates = tuple(np.broadcast_to(g, (*inp.batch, t)).reshape(rows, t)
                  for g in (inp.first, inp.higher, inp.zero))
    x = _Packed(inp.q.reshape(rows, t, d), inp.k.reshape(rows, t, d),
                inp.v.reshape(rows, t, dv),
                None if inp.logits is None else inp.logits.reshape(rows, t), gates,
                np.empty((rows, t, dv), inp.compute_dtype))
    track_g = return_state or not np.array_equal(gates[0], gates[1])
    slab = backend.chunk_size * backend.slab_size
    whole, head = lengths // slab, lengths % slab  # k slabs after a head of r tokens
    going = np.flatnonzero(whole > 0)  # sequences with slabs after their head
    slot = np.full(count, -1)
    slot[going] = np.arange(going.size)
    fresh = not any(start.length)  # every sequence starts empty: no initial state to copy
    init = None if fresh else replace(
        start.with_batch(np, (count * rows,)),
        length=np.repeat(np.asarray(start.length, dtype=np.int64), rows))

    def initial(seqs: np.ndarray) -> State:
        """The initial states of the lanes of `seqs` (fresh arrays)."""
        if init is not None:
            return init.rows(_lanes(seqs, rows))
        empty = State.empty(np, (rows * seqs.size,), d, dv, dtype=inp.compute_dtype,
                            device="cpu")
        return replace(empty, length=np.zeros(rows * seqs.size, dtype=np.int64))

    store = initial(going)  # the states of lanes that go on, between calls
    finals = initial(np.arange(count)) if return_state else None

    workspaces: dict = {}  # the worker threads' buffers, shared by the calls below

    def run(first: np.ndarray, n: int, state: State, *, threads: bool = True) -> State:
        return backend.causal_rows(Lanes(x, first, n), state, spans=list(backend._spans(n)),
                                   return_state=True, track_g=track_g, workspaces=workspaces,
                                   threads=threads)

    def finish(seqs: np.ndarray, end: State, done: np.ndarray) -> None:
        """Keep the states of the lanes of `seqs` (in the order of `end`) that go on, and
        the final ones of those that are `done`."""
        going_on = (slot[seqs] >= 0) & ~done
        if going_on.any():
            _put(store, _lanes(slot[seqs[going_on]], rows),
                 end.rows(_lanes(np.flatnonzero(going_on), rows)))
        if finals is not None and done.any():
            _put(finals, _lanes(seqs[done], rows), end.rows(_lanes(np.flatnonzero(done), rows)))

    # 1. Heads shorter than a chunk, all at once: the reference's exact chunk step on the
    # lanes padded to the longest of them, each lane's state taken after its own last token.
    short = np.flatnonzero((head > 0) & (head < backend.chunk_size))
    for part in np.array_split(short, -(-short.size * rows * int(head[short].max(initial=1))
                                         ** 2 // SHORT_BLOCK) or 1):
        if part.size:
            finish(part, _short_heads(backend, x, inp, offsets[part], head[part],
                                      initial(part)), whole[part] == 0)
    # 2. The other heads, one call per length; the calls are independent, so they are shared
    # out between the worker threads (in an order that gives each thread alike lengths).
    heads = [(int(r), np.flatnonzero(head == r))
             for r in np.unique(head[head >= backend.chunk_size])]
    heads = heads[0::2] + heads[1::2]

    def run_heads(part: slice) -> list[tuple[np.ndarray, State]]:
        return [(seqs, run(offsets[seqs], r, initial(seqs), threads=False))
                for r, seqs in heads[part]]

    if heads:
        tokens = rows * int(head.sum())
        _, done = backend._run(run_heads, len(heads), -(-tokens // len(heads)))
        for seqs, end in (pair for part in done for pair in part):
            finish(seqs, end, whole[seqs] == 0)
    for j in np.unique(whole[whole > 0]):  # 3. the slabs, one call per number of slabs
        seqs = np.flatnonzero(whole == j)
        end = run(offsets[seqs] + head[seqs], int(j) * slab,
                  store.rows(_lanes(slot[seqs], rows)))
        finish(seqs, end, np.ones(seqs.size, dtype=bool))
    if finals is None:
        return x.out, None
    counts = tuple(int(n) for n in np.asarray(start.length, dtype=np.int64) + lengths)
    return x.out, replace(finals.with_batch(np, (count, rows)), length=counts)


SHORT_BLOCK = 2**21
"""Lanes x tokens^2 of short heads computed together (the exact step's C x C weights)."""


def _short_heads(backend: Any, x: _Packed, inp: Inputs, starts: np.ndarray,
                 lengths: np.ndarray, state: State) -> State:
    """Outputs (into ``x.out``) and final states of the lanes of sequences whose heads, of
    `lengths` < C tokens at `starts`, go through the reference's exact step together
    (`zeros_ref.kernel.causal_step` with per-lane lengths): the lanes padded to the longest,
    zero keys and values in the padding, which no real token sees."""
    rows, n = x.q.shape[0], int(lengths.max())
    position = np.arange(n)
    valid = position < lengths[:, None]  # (g, n)
    tokens = np.where(valid, starts[:, None] + position, starts[:, None])

    def lanes(y: np.ndarray) -> np.ndarray:  # (R, T, ...) -> lanes (g R, n, ...)
        picked = np.swapaxes(np.take(y, tokens, axis=1), 0, 1)
        return picked.reshape(-1, *picked.shape[2:])

    real = np.repeat(valid, rows, axis=0)  # (g R, n)
    k = np.where(real[..., None], lanes(x.k), 0.0)
    v = np.where(real[..., None], lanes(x.v), 0.0)
    if x.logits is None:
        s, _ = causal_logits(k, state)
        check_default_logits(np, s, k, state.key_sum)
    else:
        s = lanes(x.logits)
    out, end = causal_step(np, state, lanes(x.q), k, v, s, tuple(lanes(g) for g in x.gates),
                           lengths=np.repeat(lengths, rows))
    backend.last_paths[REFERENCE] += int(real.sum())
    by_row = np.swapaxes(out.reshape(-1, rows, n, out.shape[-1]), 0, 1)  # (R, g, n, Dv)
    x.out[:, tokens[valid]] = by_row[:, valid]
    return end


def _gather(x: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Tokens (g, n) of x (R, T, ...) as (R g, n, ...), row-major (one copy)."""
    return np.take(x, tokens, axis=1).reshape(-1, *tokens.shape[1:], *x.shape[2:])


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
        mask = np.tile(valid, (rows, 1))[..., None]  # lanes (R g, n, 1)
        kl = np.where(mask, _gather(k, tokens), 0.0)
        size = np.tile(lengths[seqs], rows)  # (R g,) each lane's length
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
        out[:, tokens[valid]] = part.reshape(rows, seqs.size, n, dv)[:, valid]
    return out
