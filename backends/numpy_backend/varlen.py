"""Packed calls (spec 5.2, ``cu_seqlens``): the sequences of a packed call as rows of the
GEMM form, in a few batched calls rather than one per sequence.

The slab form computes R rows of n tokens each, every row from its own state (the rows of a
call may hold different counts: `frames.counts`). A packed call becomes such calls: every
(sequence, row of *B) pair is a *lane*, and a sequence of l tokens is cut as
``l = r + k L`` (L = chunk_size * slab_size, 0 <= r < L) into its *head* of r tokens and k
whole slabs. Then

1. the heads by class, one call each: heads of up to C tokens padded to the longest of
   them, then for each c those of (c - 1) C + 1 .. c C tokens padded to c C. A class is
   one slab of ragged rows (`frames.slab_frames` with `tokens`): the padding after a lane's
   last token has zero keys and values, no weight and no count, so the state taken at the
   slab's end is the one after the lane's own last token;
2. the slabs of the sequences of k slabs: one call of k L tokens for each k, every lane
   from the state its head left.

So S sequences cost at most L / C + max(l) / L calls, whatever S, the padding is below C
tokens per sequence, and the work follows the tokens, not the longest sequence
(ZS-ON-VARLEN). The rows of *B are shared between the worker threads, each running all the
calls for its rows. The lanes' states between calls are kept only for sequences that go on
(at most T / L of them), and for all when they are returned.

Bidirectional calls (spec 4.3) group the sequences by length class (lengths in
(2^(j-1), 2^j]) and pad each class to its longest, the padding masked out of the sums
(`bidirectional.bidirectional_rows` with per-row lengths): at most twice the tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from zeros_ref.kernel import Inputs, State, causal_step, check_default_logits

from .bidirectional import bidirectional_rows
from .chunk import Workspace, fast_slab, workspace
from .frames import Frame, Seq, slab_frames
from .logits import causal_logits
from .paths import FAST, REFERENCE
from .rows import ROW_TOKENS, Block

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

    def rows(self, group: slice) -> _Packed:
        """The rows `group` (views)."""
        return _Packed(self.q[group], self.k[group], self.v[group],
                       None if self.logits is None else self.logits[group],
                       tuple(g[group] for g in self.gates), self.out[group])


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
    (leading axes (S, *B)). `backend` is the `NumpyBackend` (its `causal_rows`).

    The rows of *B are shared out between the worker threads, each of which runs every
    sequence of its rows (`_packed_rows`): the pieces of a call wait on one another only
    at its end. A call of one row shares each piece's lanes out instead."""
    offsets = np.asarray(inp.offsets)
    count, rows = offsets.size - 1, math.prod(inp.batch)
    t, d, dv = inp.n, inp.q.shape[-1], inp.v.shape[-1]
    gates = tuple(np.broadcast_to(g, (*inp.batch, t)).reshape(rows, t)
                  for g in (inp.first, inp.higher, inp.zero))
    x = _Packed(inp.q.reshape(rows, t, d), inp.k.reshape(rows, t, d),
                inp.v.reshape(rows, t, dv),
                None if inp.logits is None else inp.logits.reshape(rows, t), gates,
                np.empty((rows, t, dv), inp.compute_dtype))
    track_g = return_state or not np.array_equal(gates[0], gates[1])
    track_keys = return_state or x.logits is None  # the key sums are read
    by_row = start.with_batch(np, (count, rows))

    def run(group: slice) -> State | None:
        part = State(length=by_row.length, **{name: getattr(by_row, name)[:, group]
                                              for name in _ARRAYS})
        return _packed_rows(backend, x.rows(group), offsets, part, return_state=return_state,
                            track_g=track_g, track_keys=track_keys,
                            threads=group == slice(0, rows))

    _, ends = backend._run(run, rows, t)
    if not return_state:
        return x.out, None
    return x.out, State(length=ends[0].length, **{
        name: np.concatenate([getattr(end, name) for end in ends], axis=1)
        for name in _ARRAYS})


_ARRAYS = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")
"""The array fields of a `State`."""


def _packed_rows(backend: Any, x: _Packed, offsets: np.ndarray, start: State, *,
                 return_state: bool, track_g: bool, track_keys: bool,
                 threads: bool) -> State | None:
    """Outputs (into ``x.out``) and, with `return_state`, the final states (S, R) of the R
    rows of `x`, packed as `offsets`, from `start` (S, R) (module docstring). With
    `threads` each piece's lanes are shared between the worker threads."""
    lengths = np.diff(offsets)
    count, rows = lengths.shape[0], x.q.shape[0]
    d, dv = x.q.shape[-1], x.v.shape[-1]
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
        empty = State.empty(np, (rows * seqs.size,), d, dv, dtype=x.out.dtype,
                            device="cpu")
        return replace(empty, length=np.zeros(rows * seqs.size, dtype=np.int64))

    store = initial(going)  # the states of lanes that go on, between calls
    finals = initial(np.arange(count)) if return_state else None

    def run(first: np.ndarray, n: int, state: State) -> State:
        return backend.causal_rows(Lanes(x, first, n), state, spans=list(backend._spans(n)),
                                   return_state=True, track_g=track_g, track_keys=track_keys,
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

    # 1. The heads, by class (heads of up to C tokens, then of c chunks for each c): the
    # lanes of a class are ragged rows of one slab, each from its sequence's initial state.
    chunk = backend.chunk_size
    classes = -(-head // chunk)  # c: heads of (c-1) C + 1 .. c C tokens (0: none)
    for c in np.unique(classes[classes > 0]):
        seqs = np.flatnonzero(classes == c)
        n = int(head[seqs].max()) if c == 1 else int(c) * chunk
        end = _ragged_heads(backend, x, Heads(offsets[seqs], head[seqs], n, min(n, chunk)),
                            initial(seqs), track_g=track_g, track_keys=track_keys,
                            threads=threads)
        finish(seqs, end, whole[seqs] == 0)
    for j in np.unique(whole[whole > 0]):  # 2. the slabs, one call per number of slabs
        seqs = np.flatnonzero(whole == j)
        end = run(offsets[seqs] + head[seqs], int(j) * slab,
                  store.rows(_lanes(slot[seqs], rows)))
        finish(seqs, end, np.ones(seqs.size, dtype=bool))
    if finals is None:
        return None
    counts = tuple(int(n) for n in np.asarray(start.length, dtype=np.int64) + lengths)
    return replace(finals.with_batch(np, (count, rows)), length=counts)


class Heads(NamedTuple):
    """The heads of a class of sequences: g sequences whose heads of `lengths` (g,), 1..n
    tokens, start at `starts` (g,), taken as ragged rows of one slab of n tokens in chunks
    of `chunk`."""

    starts: np.ndarray
    lengths: np.ndarray
    n: int
    chunk: int


FRAME_TOKENS = 8192
"""Lane-tokens of ragged heads whose frames are taken together (gathered inputs of 2 MB
each at D = 64 in float32: big enough to spread the frames' fixed cost, small enough that
the allocator reuses their memory rather than mapping it afresh)."""


def _ragged_heads(backend: Any, x: _Packed, heads: Heads, state: State, *, track_g: bool,
                  track_keys: bool, threads: bool) -> State:
    """Outputs (into ``x.out``) and final states of the lanes (g R, sequence-major) of
    `heads`, from `state` (their initial states): every lane a row of one slab of n tokens
    padded after its last one (`frames.slab_frames` with `tokens`). Lanes the frame cannot
    represent exactly take the reference's exact step with per-lane lengths
    (`zeros_ref.kernel.causal_step`). With `threads` the lanes are shared between the
    worker threads; each takes the frames of its lanes `FRAME_TOKENS` at a time and the
    slab products `ROW_TOKENS` at a time. The key sums are those of the initial states unless
    `track_keys` (read by the default logits, or returned)."""
    rows, n = x.q.shape[0], heads.n
    position = np.arange(n)
    valid = position < heads.lengths[:, None]  # (g, n)
    tokens = np.where(valid, heads.starts[:, None] + position, heads.starts[:, None])
    d, dv = x.q.shape[-1], x.v.shape[-1]
    block = max(1, ROW_TOKENS // n)

    def fast(ws: Workspace, start: State, seq: Seq, fr: Frame, count: np.ndarray,
             out: np.ndarray) -> State:
        """`chunk.fast_slab` on the lanes, `block` at a time (views of them)."""
        parts = []
        for lo in range(0, count.size, block):
            part = slice(lo, lo + block)
            parts.append((np.arange(count.size)[part],
                          fast_slab(ws, start.rows(part), seq.rows(part), fr.rows(part).slab(0),
                                    heads.chunk, out[part], owned=True, tokens=count[part])))
        return parts[0][1] if len(parts) == 1 else State.merge(parts)

    def run_group(group: slice) -> tuple[State, Counter]:
        step = max(block, FRAME_TOKENS // n)
        parts, paths = [], Counter()
        with workspace(x.out.dtype, d, dv, track_g=track_g) as ws:
            for lo in range(group.start, group.stop, step):
                lanes = np.arange(lo, min(lo + step, group.stop))
                end, counted = run_lanes(ws, lanes)
                parts.append((lanes - group.start, end))
                paths.update(counted)
        return (parts[0][1] if len(parts) == 1 else State.merge(parts)), paths

    def run_lanes(ws: Workspace, lanes: np.ndarray) -> tuple[State, Counter]:
        seq, row = lanes // rows, lanes % rows
        tok, real, count = tokens[seq], valid[seq], heads.lengths[seq]  # (b, n), (b,)
        flat = row[:, None] * x.q.shape[1] + tok  # the lanes' tokens (padding: their first)

        def gather(y: np.ndarray) -> np.ndarray:
            return np.take(y.reshape(-1, *y.shape[2:]), flat, axis=0)

        q, k, v = gather(x.q), gather(x.k), gather(x.v)
        k[~real] = 0.0  # no weight in the frames, nothing in the key sums
        start = state.rows(lanes)
        if x.logits is None:
            s, key_sum = causal_logits(k, start)
            check_default_logits(np, s, k, start.key_sum)
        else:
            s = gather(x.logits)
            key_sum = start.key_sum + k.sum(axis=1) if track_keys else start.key_sum
        seq_in = Seq(q, k, v, s, *(gather(g) for g in x.gates))
        out = np.empty((lanes.size, n, dv), x.out.dtype)
        with np.errstate(all="ignore"):  # lanes whose statistics overflow fail the test
            fr = slab_frames(start, seq_in, n, tokens=count)
        ok = fr.ok[:, 0]
        if ok.all():
            end = fast(ws, start, seq_in, fr, count, out)
        else:
            parts = []
            good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
            if good.size:
                part = np.empty((good.size, n, dv), out.dtype)
                parts.append((good, fast(ws, start.rows(good), seq_in.rows(good),
                                         fr.rows(good), count[good], part)))
                out[good] = part
            sub = seq_in.rows(bad)
            for y in (sub.q, sub.v, sub.s):  # the exact step's padding: zeros
                y[~real[bad]] = 0.0
            out[bad], st = causal_step(np, start.rows(bad), sub.q, sub.k, sub.v, sub.s,
                                       sub.gates, lengths=count[bad])
            parts.append((bad, st))
            end = State.merge(parts)
        x.out[np.broadcast_to(row[:, None], tok.shape)[real], tok[real]] = out[real]
        paths = Counter({FAST: int(count[ok].sum()), REFERENCE: int(count[~ok].sum())})
        return replace(end, key_sum=key_sum), paths

    return backend.run_groups(run_group, heads.starts.size * rows, n, threads=threads)


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
