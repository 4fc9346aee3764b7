"""The NumPy backend: the chunked form of spec 4.2 as BLAS products (entry point ``numpy``).

One algorithm, the reference's. Validation, the `State`, the default logits and the exact
per-row chunk step are `zeros_ref`'s own functions; this module only re-arranges the chunk
step so that nearly all of its work is matrix products. Dimension names: b = prod(*B) rows
(batch and heads), N tokens, C chunk length, L = (chunks per block) * C, D and Dv.

The fast variant: one frame per block (spec 4.2, steps 1-6)
----------------------------------------------------------
The reference gives every query row t its own frame: exponents relative to its running max
m_t and the mean logit relative to sbar_t. That makes the C x C weights an elementwise
formula. Here every row of a block of L tokens (several chunks) shares one frame:

    M     = max(m_prev, max of the block's logits)       (the block's top, >= every m_t)
    s_ref = s of the block's first key                   (visible to every row of the block)
    w_i   = exp(s_i - M)
    E'_t  = sum_{j <= t} w_j                  (the prefix's E rescaled by exp(m_prev - M))
    a'_t  = gh_t / E'_t,   b_t = (g1_t - gh_t) / t,
    c'_t  = (g0_t - gh_t) / t - b_t (sbar_t - s_ref)

Since exp(s_i - m_t) / E_t = w_i / E'_t and s_i - sbar_t = (s_i - s_ref) - (sbar_t - s_ref),
row t's weights are ``r[t,i] = a'_t w_i + b_t (s_i - s_ref) + c'_t``, rank 3 in (t, i). The
unit directions are folded into the same factors (``qh_t = q_t / |q_t|``):

    Qf_t = [a'_t, b_t, c'_t] / |q_t|  (x)  q_t          (3D,)  query features
    Kf_i = [w_i, s_i - s_ref, 1] / |k_i|  (x)  k_i      (3D,)  key features

and a chunk is flash-linear-attention's chunk form: ``out = [P | Qf] @ [V ; S]`` with
``P = tril((q k^T) * (A @ Bm))``, A (C, 3) and Bm (3, C) the factors above, S the (3D, Dv)
state [F; G; H] moved into the block frame, and the state after chunk j
``S_j = S_{j-1} + Kf_j^T V_j``: GEMMs plus a few elementwise passes. The per-row statistics
(M, E', sbar, the factors) of all blocks are computed up front, vectorised over blocks, with a
scan over blocks for the prefix sums.

Where b_t = 0 on every row of a block ("level" blocks: first gate = higher gate, as with the
default gates), G weighs nothing in the block's outputs: its D columns of Qf and D rows of
S_j are left out of the chunk products (a quarter of the largest one) and G's update is added
in one product over the whole block at its end. When every block of a call is level and the
state is not returned, nothing reads G at all, and it is not kept. Factors, features and the
state in the workspace are kept in the order F, H, G, so that leaving G out is a slice.

When the frame is exact
-----------------------
Let tiny be the smallest normal number of the compute dtype and ``T = -log(tiny) / 2``
(43.7 for float32, 354 for float64). Every row's own max obeys
``m_t >= m_lo = max(m_prev, s_ref)``, so ``E'_t >= exp(m_lo - M)``. A block row takes the fast
path when

1. the spread ``M - m_lo <= T``: then E'_t >= sqrt(tiny) and a'_t is finite, and a weight
   that matters to row t (``p[t,i] >= tiny^(3/8)``) is ``w_i = p[t,i] E'_t >= tiny^(7/8)``;
2. every q and k row has ``|x|^2 = 0`` or ``tiny^(1/4) <= |x|^2 <= tiny^(-1/4)``, so that
   ``1/|x|`` lies in [tiny^(1/8), tiny^(-1/8)] and the folded factor ``w_i / |k_i|`` of a
   weight that matters is still a normal number (full relative precision); a zero row has
   direction zero, as in the reference;
3. ``sum_j max|A_j| max|Bm_j| <= max / 8`` (max the largest finite number), a bound on
   every entry of ``A @ Bm`` (masked ones included), so nothing overflows; and every input
   of the block is finite (a NaN fails a comparison; for v their sum is tested).

Weights that underflow have p < tiny^(3/8) and move outputs by less than that times the
output scale. The b and c' terms are as exact as the reference's because s_ref and sbar_t
are both visible to row t: |s_i - s_ref| and |sbar_t - s_ref| never exceed the range of the
logits row t sees, which is what the tolerance of spec 7.1 scales with (spec 6, item 3). One
loss is not covered: gates so small (below tiny^(7/8)) that their factors underflow.

Rows of a block that fail are redone chunk by chunk, each chunk with its own frame (M and
s_ref of the chunk), and rows of a chunk that still fail run the reference's exact per-row
step, `zeros_ref._chunked.causal_step`, which also keeps a NaN or infinity at
position i out of the outputs before i (ZS-ERR-NONFINITE). Between blocks the state is the
reference's `State` in the reference's frame, so the paths interleave freely.

Speed
-----
Leading axes are flattened to one axis b and split between worker threads (NumPy and BLAS
release the GIL); each worker issues single-threaded BLAS calls on (b/workers, chunks, C, .)
stacks and reuses its buffers from block to block: working memory is O(b L (C + D + Dv))
plus O(b N) per-token statistics, never N x N or N x D x Dv. float16 inputs are computed in
float32 and rounded once (ZS-DTYPE-HALF).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from zeros_backends._machine import cpus
from zeros_ref import State
from zeros_ref._attention import check_call
from zeros_ref._chunked import causal_step
from zeros_ref._directions import unit
from zeros_ref._logits import deviation_logits, running_mean_logits

__all__ = ["FAST", "REFERENCE", "NumpyBackend", "backend", "spread_limit"]

FAST = "fast"
"""Path name of row-tokens computed in a shared frame (the GEMM form)."""
REFERENCE = "reference"
"""Path name of row-tokens computed by the reference's per-row chunk step."""

LOGITS_PIECE = 4096
"""Tokens per piece when computing the default logits (bounds their temporary memory)."""
PREFIX_CHUNK = 64
"""Tokens per chunk of the default logits' prefix sums of keys (one product each)."""


def spread_limit(dtype: Any) -> float:
    """Largest spread ``M - m_lo`` of logits one frame may cover: ``-log(tiny) / 2``."""
    return -math.log(float(np.finfo(dtype).tiny)) / 2


# ---------------------------------------------------------------------------------------------
# A stretch of the sequence and the statistics of its blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seq:
    """Inputs of b rows over n consecutive tokens, in the compute dtype.

    q, k : (b, n, D); v : (b, n, Dv); s, first, higher, zero : (b, n).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    s: np.ndarray
    first: np.ndarray
    higher: np.ndarray
    zero: np.ndarray

    def rows(self, idx: np.ndarray) -> _Seq:
        """The rows `idx` (copies)."""
        return _Seq(*(x[idx] for x in self._fields()))

    def span(self, start: int, stop: int) -> _Seq:
        """Tokens ``start:stop`` (views)."""
        return _Seq(*(x[:, start:stop] for x in self._fields()))

    @property
    def gates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.first, self.higher, self.zero

    def _fields(self) -> tuple[np.ndarray, ...]:
        return self.q, self.k, self.v, self.s, self.first, self.higher, self.zero


class _Frame(NamedTuple):
    """Statistics of every row of nb blocks of L tokens, each block in its own frame.

    Per block, (b, nb): top M, ref s_ref, decay ``exp(m_prev - M)``, mean_prev
    ``sbar_prev - s_ref``, ok (the row takes the fast path), level (the slope b is 0 on
    the whole block: g1 = gh). Per token, (b, nb, L): normaliser E'_t, mean
    ``sbar_t - s_ref``. Factors (b, nb, 3, L), in the order of the state parts they weight,
    F, H, G: query ``[a', c', b] / |q|``; key ``[w, 1, s - s_ref] / |k|``.
    """

    top: np.ndarray
    ref: np.ndarray
    decay: np.ndarray
    mean_prev: np.ndarray
    ok: np.ndarray
    level: np.ndarray
    normaliser: np.ndarray
    mean: np.ndarray
    query: np.ndarray
    key: np.ndarray

    def block(self, j: int) -> _Frame:
        """Block j alone: per-block fields (b,), per-token fields (b, L) or (b, 3, L)."""
        return _Frame(*(x[:, j] for x in self))

    def rows(self, idx: np.ndarray) -> _Frame:
        return _Frame(*(x[idx] for x in self))


def _inverse_norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``1/|x|`` of every row of x (b, n, D), 0 for zero rows; and which rows are in range.

    In range: ``|x|^2 = 0`` or ``tiny^(1/4) <= |x|^2 <= tiny^(-1/4)`` (module docstring, 2).
    Returns two (b, n) arrays.
    """
    sq = np.einsum("bnd,bnd->bn", x, x)  # (b, n)
    tiny = float(np.finfo(x.dtype).tiny)
    usable = (sq >= tiny**0.25) & (sq <= tiny**-0.25)
    inv = np.zeros_like(sq)
    np.divide(1.0, np.sqrt(sq, where=usable, out=inv), where=usable, out=inv)
    return inv, usable | (sq == 0)


def _prefix_scan(state: State, ref: np.ndarray, top: np.ndarray, block_sum: np.ndarray,
                 block_mean: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """The prefix of every block in its frame: a scan over blocks on (b,) rows (spec 4.2.3).

    Shapes: ref, top (b, nb); block_sum (b, nb) ``sum_i w_i`` of the block; block_mean
    (b, nb) ``sum_i (s_i - s_ref)`` of the block. Returns (b, nb) arrays: m_prev (the
    block's own first logit for an empty prefix), decay, E'_prev and mean_prev.
    """
    m_prev, decay, e_prev, mean_prev = (np.zeros_like(top) for _ in range(4))
    n = state.length
    if n:
        m, e, mean = state.running_max, state.normaliser, state.mean_offset  # mean: sbar - m
        mean = mean + (m - ref[:, 0])  # sbar - s_ref of block 0
    for j in range(top.shape[1]):
        if n:
            m_prev[:, j], decay[:, j] = m, np.exp(m - top[:, j])
            e_prev[:, j], mean_prev[:, j] = e * decay[:, j], mean
        else:
            m_prev[:, j] = ref[:, j]
        # The state after block j, in its frame; mean moved to the next block's s_ref.
        m, e = top[:, j], e_prev[:, j] + block_sum[:, j]
        mean = (n * mean_prev[:, j] + block_mean[:, j]) / (n + length)
        if j + 1 < top.shape[1]:
            mean = mean + (ref[:, j] - ref[:, j + 1])
        n += length
    return m_prev, decay, e_prev, mean_prev


def _max_abs(x: np.ndarray) -> np.ndarray:
    """``max |x|`` over the last axis without a temporary; NaN if x holds one."""
    return np.maximum(np.max(x, axis=-1), -np.min(x, axis=-1))


def _frames(state: State, seq: _Seq, length: int) -> _Frame:
    """Frames of the nb = n / L blocks of `seq` that follow `state` (spec 4.2 steps 1-3)."""
    b, n = seq.s.shape
    nb = n // length

    def blocks(x: np.ndarray) -> np.ndarray:  # (b, n, ...) -> (b, nb, L, ...)
        return x.reshape(b, nb, length, *x.shape[2:])

    s = blocks(seq.s)  # (b, nb, L)
    t = (state.length + np.arange(1, n + 1, dtype=s.dtype)).reshape(nb, length)  # 1-based
    # Step 1: each block's top M, a running max over blocks.
    ref = s[..., 0]  # (b, nb)
    top = np.maximum.accumulate(np.max(s, axis=-1), axis=1)  # (b, nb)
    if state.length:
        top = np.maximum(top, state.running_max[:, None])
    # Steps 2-3: weights, E'_t and sbar_t - s_ref, with the prefix of each block. The key
    # factors [w, 1, s - s_ref] are written in place and divided by |k| once used.
    key = np.empty((b, nb, 3, length), s.dtype)  # (b, nb, 3, L)
    weights, centred = key[:, :, 0], key[:, :, 2]
    np.exp(np.subtract(s, top[..., None], out=weights), out=weights)
    np.subtract(s, ref[..., None], out=centred)
    key[:, :, 1] = 1.0
    normaliser = np.cumsum(weights, axis=-1)  # (b, nb, L), completed below
    mean = np.cumsum(centred, axis=-1)  # (b, nb, L), completed below
    m_prev, decay, e_prev, mean_prev = _prefix_scan(
        state, ref, top, normaliser[..., -1], mean[..., -1], length)
    normaliser += e_prev[..., None]
    count = state.length + length * np.arange(nb)  # (nb,) tokens before each block
    mean += (count * mean_prev)[..., None]
    mean /= t  # sbar_t - s_ref
    # Spec 4.1: coefficients [a', c', b], c' absorbing the move of the mean to s_ref.
    query = np.empty_like(key)  # (b, nb, 3, L)
    higher = blocks(seq.higher)
    np.divide(higher, normaliser, out=query[:, :, 0])
    slope = np.subtract(blocks(seq.first), higher, out=query[:, :, 2])
    slope /= t
    level = ~slope.any(axis=-1)  # (b, nb)
    c = np.subtract(blocks(seq.zero), higher, out=query[:, :, 1])
    c /= t
    c -= slope * mean
    inv_q, q_ok = _inverse_norms(seq.q)
    inv_k, k_ok = _inverse_norms(seq.k)
    query *= blocks(inv_q)[..., None, :]
    key *= blocks(inv_k)[..., None, :]
    # Which rows of which blocks the frame represents exactly (module docstring, 1-3).
    dtype = s.dtype
    ok = top - np.maximum(m_prev, ref) <= spread_limit(dtype)
    bound = np.sum(_max_abs(query) * _max_abs(key), axis=-1)
    ok &= bound <= np.finfo(dtype).max / 8
    ok &= blocks(q_ok).all(axis=-1) & blocks(k_ok).all(axis=-1)
    # Every v finite: their sum is finite if they are (one that overflows merely sends a
    # finite block to the exact path).
    ok &= np.isfinite(np.sum(seq.v.reshape(b, nb, -1), axis=-1))
    return _Frame(top, ref, decay, mean_prev, ok, level, normaliser, mean, query, key)


# ---------------------------------------------------------------------------------------------
# The fast chunk form of one block
# ---------------------------------------------------------------------------------------------


class _Buffers(NamedTuple):
    """One worker's buffers for b rows of nc chunks of C tokens, and views into them.

    x : (b, nc, C, C + 3D) holds [P | Qf]; y : (b, nc + 1, C + 3D, Dv) holds [V ; S_j] (slot
    nc holds only the state after the block); kf : (b, nc, C, 3D) holds Kf; r : (b, nc, C, C)
    the rank-3 weights A @ Bm. Features and states are in the order F, H, G.
    ``full`` and ``level`` are (X, [V ; S_j] of chunks 0 .. nc-1, Kf^T, the chunk updates
    Kf_j^T V_j that go to y[:, 1:], and the (S_j, S_{j-1}) pairs of the running sum) with
    all three parts and with F and H only. The views are made once per shape.
    """

    r: np.ndarray
    p: np.ndarray  # X[..., :C]  (b, nc, C, C)
    qf: tuple[np.ndarray, ...]  # Qf slot j = X[..., C + jD : C + (j+1)D] as (b, L, D)
    kf: tuple[np.ndarray, ...]  # Kf slot j as (b, L, D)
    kg: np.ndarray  # Kf slot 2 (G) transposed  (b, D, L)
    v: np.ndarray  # the V rows of y[:, :nc]  (b, nc, C, Dv)
    s0: np.ndarray  # S_0 = y[:, 0, C:] as (b, 3, D, Dv)
    end: np.ndarray  # the state after the block, y[:, nc, C:] as (b, 3, D, Dv)
    full: tuple[Any, ...]
    level: tuple[Any, ...]


class _Workspace:
    """Buffers of one worker, reused from block to block (one set per chunk length C), and
    their views (`_Buffers`), made once per shape: a block issues some fifty NumPy calls.

    `track_g`: whether the state's G is kept. When no block of the call has a slope b != 0
    and the state is not returned, nothing reads G: it is left out of the work and held at 0
    (harmless where it is read with b = 0, as by the reference's step).
    """

    def __init__(self, dtype: Any, d: int, dv: int, *, track_g: bool = True) -> None:
        self.dtype, self.d, self.dv, self.track_g = dtype, d, dv, track_g
        self._sets: dict[int, tuple[np.ndarray, ...]] = {}
        self._views: dict[tuple[int, int, int], _Buffers] = {}

    def get(self, b: int, nc: int, c: int) -> _Buffers:
        views = self._views.get((b, nc, c))
        if views is not None:
            return views
        held = self._sets.get(c)
        d, dv = self.d, self.dv
        if held is None or held[0].shape[0] < b or held[0].shape[1] < nc:
            held = (
                np.empty((b, nc, c, c + 3 * d), self.dtype),
                np.empty((b, nc, c, 3 * d), self.dtype),
                np.empty((b, nc + 1, c + 3 * d, dv), self.dtype),
                np.empty((b, nc, c, c), self.dtype),
            )
            self._sets[c] = held
            self._views.clear()
        x, kf, y, r = held[0][:b, :nc], held[1][:b, :nc], held[2][:b, :nc + 1], held[3][:b, :nc]
        length = nc * c
        qf = _view(x, b, length, c + 3 * d)[..., c:]
        kt = _view(kf, b, length, 3 * d)
        kft = kf.swapaxes(-1, -2)  # (b, nc, 3D, C)

        def products(parts: int) -> tuple[Any, ...]:
            w = c + parts * d
            return (x[..., :w], y[:, :nc, :w], kft[:, :, :parts * d], y[:, 1:, c:w],
                    tuple((y[:, j, c:w], y[:, j - 1, c:w]) for j in range(1, nc + 1)))

        views = _Buffers(
            r, x[..., :c], tuple(qf[..., j * d:(j + 1) * d] for j in range(3)),
            tuple(kt[..., j * d:(j + 1) * d] for j in range(3)), kt[..., 2 * d:].swapaxes(1, 2),
            y[:, :nc, :c], _view(y[:, 0, c:], b, 3, d, dv), _view(y[:, nc, c:], b, 3, d, dv),
            products(3), products(2))
        self._views[b, nc, c] = views
        return views


def _view(x: np.ndarray, *shape: int) -> np.ndarray:
    """`x` reshaped without a copy (outputs are written through such views)."""
    y = x.reshape(shape)
    if not np.may_share_memory(y, x):
        raise AssertionError(f"a {x.shape} -> {shape} view of strides {x.strides} needs a copy")
    return y


def _chunked(x: np.ndarray, nc: int, c: int) -> np.ndarray:
    """View (b, nc*C, ...) as (b, nc, C, ...)."""
    return _view(x, x.shape[0], nc, c, *x.shape[2:])


@functools.cache
def _causal_mask(c: int, dtype: Any) -> np.ndarray:
    """(C, C) lower-triangular ones: key i is visible from query t if i <= t."""
    mask = np.tri(c, dtype=dtype)
    mask.flags.writeable = False
    return mask


def _fast_block(ws: _Workspace, state: State, seq: _Seq, fr: _Frame, c: int,
                out: np.ndarray) -> State:
    """Outputs (written to `out`, (b, L, Dv)) and the state after one block, in its frame.

    Shapes: seq arrays (b, L = nc*C, ...); fr one block of `_frames`; state arrays (b, ...).
    Spec 4.2 steps 4-6 as GEMMs (module docstring).
    """
    b, length = seq.q.shape[:2]
    nc = length // c
    buf = ws.get(b, nc, c)
    level = bool(fr.level.all())  # b = 0: G adds nothing to the outputs (module docstring)
    rank = 2 if level else 3  # the factors that weigh in the outputs: F, H (and G)
    track_g = ws.track_g or not level
    # Stacked features Qf = [a', c', b] (x) q / |q| into X[..., C:] (without b where level),
    # Kf = [w, 1, s - s_ref] (x) k / |k|  (b, L, 3D) (without G's where it is not kept).
    query, key = fr.query[..., None], fr.key[..., None]  # (b, 3, L, 1)
    for j in range(rank):
        np.multiply(seq.q, query[:, j], out=buf.qf[j])
    for j in range(3 if track_g else 2):
        np.multiply(seq.k, key[:, j], out=buf.kf[j])
    # Step 4: P = tril((q k^T) * (A @ Bm)) into X[..., :C]  (b, nc, C, C).
    np.matmul(_chunked(seq.q, nc, c), _chunked(seq.k, nc, c).swapaxes(-1, -2), out=buf.p)
    coef = fr.query[:, :rank].reshape(b, rank, nc, c).transpose(0, 2, 3, 1)  # A (b, nc, C, rank)
    keys = fr.key[:, :rank].reshape(b, rank, nc, c).transpose(0, 2, 1, 3)  # Bm (b, nc, rank, C)
    r = np.matmul(coef, keys, out=buf.r)
    r *= _causal_mask(c, r.dtype)  # every entry of r is finite (`_frames`)
    np.multiply(buf.p, r, out=buf.p)
    # Step 5: the prefix state in the block frame, S_0 = [e F, H, G + (sbar - s_ref) H].
    buf.v[...] = _chunked(seq.v, nc, c)
    s0 = buf.s0  # (b, 3, D, Dv), slots F, H, G
    np.multiply(state.kv[:, 0], fr.decay[:, None, None], out=s0[:, 0])
    s0[:, 1] = state.kv[:, 2]
    if track_g:
        np.multiply(state.kv[:, 2], fr.mean_prev[:, None, None], out=s0[:, 2])
        s0[:, 2] += state.kv[:, 1]
    # Step 6: chunk updates Kf_j^T V_j (one call for all chunks), running sums S_j, then
    # out = [P | Qf] @ [V ; S_j]; slot nc of y ends as the state after the block. Where
    # level, G is left out of these and moved to the end of the block in one product (or
    # left out altogether where it is not kept).
    x, yv, kft, updates, running = buf.level if level else buf.full
    np.matmul(kft, buf.v, out=updates)
    for now, before in running:
        now += before
    np.matmul(x, yv, out=_chunked(out, nc, c))
    if level and track_g:
        np.add(s0[:, 2], np.matmul(buf.kg, seq.v), out=buf.end[:, 2])
    # The state after the block, back in the reference frame (G about the new mean).
    end = buf.end
    kv = np.empty(end.shape, end.dtype)  # (b, 3, D, Dv), parts F, G, H
    kv[:, 0], kv[:, 2] = end[:, 0], end[:, 1]
    if track_g:
        np.multiply(end[:, 1], fr.mean[:, -1, None, None], out=kv[:, 1])
        np.subtract(end[:, 2], kv[:, 1], out=kv[:, 1])
    else:
        kv[:, 1] = 0.0
    mean_offset = fr.mean[:, -1] + (fr.ref - fr.top)  # sbar - M
    return State(state.length + length, fr.top, mean_offset, fr.normaliser[:, -1], kv,
                 state.key_sum)


def _reference_chunk(state: State, seq: _Seq, out: np.ndarray) -> State:
    """The reference's exact per-row chunk step (`causal_step`)."""
    out[...], state = causal_step(np, state, seq.q, seq.k, seq.v, seq.s, seq.gates)
    return state


# ---------------------------------------------------------------------------------------------
# Blocks in sequence; rows that fail the frame test
# ---------------------------------------------------------------------------------------------


def _take(state: State, idx: Any) -> State:
    return State(state.length, state.running_max[idx], state.mean_offset[idx],
                 state.normaliser[idx], state.kv[idx], state.key_sum[idx])


def _merge(parts: list[tuple[np.ndarray, State]], b: int) -> State:
    """One state of b rows from states of disjoint row sets."""
    fields = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")
    first = parts[0][1]
    merged = {f: np.empty((b, *getattr(first, f).shape[1:]), getattr(first, f).dtype)
              for f in fields}
    for idx, st in parts:
        for f in fields:
            merged[f][idx] = getattr(st, f)
    return State(first.length, **merged)


def _blocks(ws: _Workspace, state: State, seq: _Seq, length: int, c: int, out: np.ndarray,
            paths: Counter) -> State:
    """Outputs (into `out`, (b, n, Dv)) and final state of blocks of L tokens, L = nc*C.

    Rows that pass the frame test of a block take `_fast_block`; the others are redone chunk
    by chunk (blocks of one chunk, a frame each), and in a single chunk by the reference.
    """
    with np.errstate(all="ignore"):  # rows whose statistics overflow fail the test
        fr = _frames(state, seq, length)
    b = seq.s.shape[0]
    for j in range(fr.ok.shape[1]):
        span = seq.span(j * length, (j + 1) * length)
        dest = out[:, j * length:(j + 1) * length]
        ok = fr.ok[:, j]
        if ok.all():
            paths[FAST] += b * length
            state = _fast_block(ws, state, span, fr.block(j), c, dest)
            continue
        parts = []
        good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
        if good.size:
            paths[FAST] += good.size * length
            part = np.empty((good.size, length, out.shape[-1]), out.dtype)
            st = _fast_block(ws, _take(state, good), span.rows(good), fr.rows(good).block(j),
                             c, part)
            dest[good] = part
            parts.append((good, st))
        part = np.empty((bad.size, length, out.shape[-1]), out.dtype)
        st, sub = _take(state, bad), span.rows(bad)
        if length > c:
            st = _blocks(ws, st, sub, c, c, part, paths)
        else:
            paths[REFERENCE] += bad.size * length
            st = _reference_chunk(st, sub, part)
        dest[bad] = part
        parts.append((bad, st))
        state = _merge(parts, b)
    return state


# ---------------------------------------------------------------------------------------------
# Worker threads
# ---------------------------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_BLAS: Any = None


def _blas_controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, or None if not installed."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
            _BLAS = False
        else:
            _BLAS = ThreadpoolController()
    return _BLAS or None


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while workers run (the workers are the parallelism)."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _row_groups(b: int, workers: int) -> list[slice]:
    """Contiguous row ranges, one per worker."""
    bounds = np.linspace(0, b, workers + 1).round().astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def _map(fn: Callable[[slice], Any], groups: list[slice], *, single_blas: bool) -> list[Any]:
    """``fn`` on every row group, on worker threads when there are several.

    With `single_blas` BLAS runs one thread per call during the work: the products are
    small (at most C x (C + 3D) by (C + 3D) x Dv), and a BLAS that splits them between
    threads spends more time waking its threads than computing (measured: the reference's
    chunk products run 3-10x slower with two OpenBLAS threads than with one on a 2-CPU VM).
    """
    global _POOL
    with _single_threaded_blas() if single_blas else contextlib.nullcontext():
        if len(groups) == 1:
            return [fn(groups[0])]
        if _POOL is None or _POOL._max_workers < len(groups):
            _POOL = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="zeros-numpy")
        return [f.result() for f in [_POOL.submit(fn, g) for g in groups]]


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class NumpyBackend:
    """ZeroS attention on NumPy arrays at BLAS speed (spec section 10 protocol).

    Parameters
    ----------
    chunk_size : int
        C, the length of the chunks whose C x C weights are formed explicitly.
    block_chunks : int
        Chunks per block: the tokens (L = block_chunks * C) that share one frame and whose
        products are issued as one batched call.
    workers : int or None
        Worker threads over the flattened batch axis; None uses the CPUs this process may run
        on. With several workers BLAS is limited to one thread during the call (process-wide,
        through threadpoolctl; without threadpoolctl one worker is used).

    Attributes
    ----------
    last_paths : collections.Counter
        Row-tokens of the last causal call per path, `FAST` or `REFERENCE` (diagnostics for
        tests and the bench).
    """

    name = "numpy"
    dtypes = ("float16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits"})
    device = "cpu"

    def __init__(self, *, chunk_size: int = 64, block_chunks: int = 8,
                 workers: int | None = None) -> None:
        self.chunk_size = chunk_size
        self.block_chunks = block_chunks
        self.workers = workers
        self.last_paths: Counter = Counter()

    def from_numpy(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """A NumPy array of `dtype` (the backend's arrays are NumPy arrays)."""
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        logits: Any = None,
        first: Any = 1.0,
        higher: Any = 1.0,
        zero: Any = 0.0,
        causal: bool = True,
        state: State | None = None,
        return_state: bool = False,
    ) -> Any:
        """ZeroS attention with the semantics of `zeros_ref.attention`.

        Parameters
        ----------
        q, k : (..., N, D) NumPy arrays of one real floating dtype.
        v : (..., N, Dv) array.
        logits : (..., N) array or None (the deviation logits of k, ZS-LOG-DEFAULT).
        first, higher, zero : float or array broadcastable to (..., N); gates g1, gh, g0.
        causal : bool
            Prefix weights if True, whole-sequence weights if False.
        state : zeros_ref.State or None
            State of the preceding part of the sequence (causal only).
        return_state : bool
            Also return the state after this input (causal only).

        Returns
        -------
        output : (..., N, Dv) array of the input dtype; state : State, if `return_state`.

        Notes
        -----
        The chunked form of spec 4.2 with one frame per block of tokens (module docstring);
        rows the frame cannot represent exactly take the reference's per-row step.

        References
        ----------
        spec/zeros-spec.md: ZS-DEF-*, ZS-ON-*, ZS-STREAM-*, ZS-STAB-*, ZS-ERR-*.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = rng.normal(size=(3, 2, 5, 4))
        >>> backend.attention(q, k, v).shape
        (2, 5, 4)
        """
        inp, start = check_call(q, k, v, logits=logits, first=first, higher=higher, zero=zero,
                                causal=causal, state=state, return_state=return_state)
        if not isinstance(inp.q, np.ndarray):
            raise TypeError(f"the numpy backend takes NumPy arrays; got {type(q).__name__}")
        batch, n, dv = inp.batch, inp.n, inp.v.shape[-1]
        self.last_paths = Counter()
        if n == 0:
            out = np.zeros((*batch, 0, dv), dtype=inp.dtype)
            return (out, start) if return_state else out
        if causal:
            flat, end = self._causal(inp, start.with_batch(np, (math.prod(batch),)),
                                     return_state=return_state)
        else:
            flat, end = self._bidirectional(inp), None
        out = flat.reshape(*batch, n, dv).astype(inp.dtype, copy=False)
        if return_state:
            return out, end.with_batch(np, batch)
        return out

    # -- causal ---------------------------------------------------------------------------------

    def _run(self, fn: Callable[[slice], Any], b: int, n: int) -> tuple[list[slice], list]:
        """``fn`` on row groups of the b rows: one per worker for calls of at least two blocks'
        worth of row-tokens (with single-threaded BLAS), else one group as it comes."""
        big = b * n >= 2 * self.chunk_size * self.block_chunks
        workers = self.workers or cpus()
        if not big or _blas_controller() is None:
            workers = 1
        groups = _row_groups(b, max(1, min(workers, b)))
        return groups, _map(fn, groups, single_blas=big)

    def _spans(self, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(start, stop, L, C) of runs of equal blocks: whole blocks, whole chunks, the rest."""
        c, block = self.chunk_size, self.chunk_size * self.block_chunks
        whole = n - n % block
        if whole:
            yield 0, whole, block, c
        tail = whole + (n - whole) // c * c
        if tail > whole:
            yield whole, tail, tail - whole, c
        if n > tail:
            yield tail, n, n - tail, n - tail

    def _causal(self, inp: Any, start: State, *,
                return_state: bool) -> tuple[np.ndarray, State]:
        """Causal outputs (b, N, Dv) and the final state (b rows) of flattened inputs.

        Parts of the state that nothing reads are not kept unless it is returned: the key sum
        (read by the default logits) and G (read where first != higher).
        """
        b, n = math.prod(inp.batch), inp.n
        d, dv = inp.q.shape[-1], inp.v.shape[-1]
        q, k = inp.q.reshape(b, n, d), inp.k.reshape(b, n, d)
        v = inp.v.reshape(b, n, dv)
        gates = tuple(g.reshape(b, n) for g in (inp.first, inp.higher, inp.zero))
        logits = None if inp.logits is None else inp.logits.reshape(b, n)
        out = np.empty((b, n, dv), inp.compute_dtype)

        def rows(g: slice) -> tuple[State, Counter]:
            track_g = return_state or not np.array_equal(gates[0][g], gates[1][g])
            ws = _Workspace(inp.compute_dtype, d, dv, track_g=track_g)
            paths, state = Counter(), _take(start, g)
            if logits is None:
                s, key_sum = _causal_logits(k[g], state)
            else:
                s, key_sum = logits[g], state.key_sum  # the sum is read only when returned
                if return_state:
                    key_sum = key_sum + np.sum(k[g], axis=1)
            seq = _Seq(q[g], k[g], v[g], s, *(x[g] for x in gates))
            for p0, p1, length, c in self._spans(n):
                state = _blocks(ws, state, seq.span(p0, p1), length, c, out[g, p0:p1], paths)
            # Copies: the blocks' fields are views of per-call buffers whose size grows with
            # N, which a returned state must not keep alive (ZS-ON-STATE).
            return State(state.length, state.running_max.copy(), state.mean_offset.copy(),
                         state.normaliser.copy(), state.kv.copy(), key_sum.copy()), paths

        groups, results = self._run(rows, b, n)
        self.last_paths = sum((p for _, p in results), Counter())
        if len(groups) == 1:
            return out, results[0][0]
        return out, _merge([(np.arange(b)[g], st) for g, (st, _) in zip(groups, results)], b)

    # -- bidirectional --------------------------------------------------------------------------

    def _bidirectional(self, inp: Any) -> np.ndarray:
        """Bidirectional outputs (b, N, Dv): one whole-sequence frame (spec 4.3)."""
        b, n = math.prod(inp.batch), inp.n
        d, dv = inp.q.shape[-1], inp.v.shape[-1]
        q, k = inp.q.reshape(b, n, d), inp.k.reshape(b, n, d)
        v = inp.v.reshape(b, n, dv)
        if inp.logits is None:
            s = deviation_logits(k, causal=False)  # (b, N), ZS-LOG-DEFAULT
        else:
            s = inp.logits.reshape(b, n)
        gates = tuple(g.reshape(b, n) for g in (inp.first, inp.higher, inp.zero))
        out = np.empty((b, n, dv), inp.compute_dtype)
        block = self.chunk_size * self.block_chunks

        def rows(g: slice) -> None:
            _bidirectional_rows(q[g], k[g], v[g], s[g], tuple(x[g] for x in gates), out[g],
                                block)

        self._run(rows, b, n)
        return out


def _causal_logits(k: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray]:
    """Default causal logits (ZS-LOG-DEFAULT) of k (b, N, D) after `state`, as (b, N), and
    the key sum after k, (b, D).

    The reference's `running_mean_logits`: ``s_i = -<k_i, ubar_i> / sqrt(D)`` with
    ``ubar_i = (key_sum + sum_{j<=i} k_j) / (1 + n + i)``. The prefix sums are formed piece by
    piece (bounded memory), within chunks of C tokens as products with a lower-triangular
    matrix of ones, and the chunks' totals carried; a last partial chunk takes
    `running_mean_logits` itself.
    """
    b, n, d = k.shape
    c = PREFIX_CHUNK
    ones = np.tri(c, dtype=k.dtype)  # (C, C)
    s = np.empty((b, n), k.dtype)
    key_sum, count = state.key_sum, state.length  # keys before the piece
    for p0 in range(0, n, LOGITS_PIECE):
        piece = k[:, p0:p0 + LOGITS_PIECE]
        whole = piece.shape[1] // c * c
        if whole:
            sums = np.matmul(ones, _chunked(piece[:, :whole], whole // c, c))  # (b, nc, C, D)
            totals = sums[:, :, -1]  # (b, nc, D)
            sums += (np.cumsum(totals, axis=1) - totals + key_sum[:, None])[:, :, None]
            sums = sums.reshape(b, whole, d)  # key_sum + sum_{j<=i} k_j
            dots = np.einsum("bnd,bnd->bn", piece[:, :whole], sums)
            weight = 1.0 + count + np.arange(1, whole + 1, dtype=k.dtype)  # 1 + n + i
            s[:, p0:p0 + whole] = dots / (-math.sqrt(d) * weight)
            key_sum, count = sums[:, -1], count + whole
        if whole < piece.shape[1]:
            rest = piece[:, whole:]
            s[:, p0 + whole:p0 + piece.shape[1]] = running_mean_logits(np, rest, key_sum,
                                                                       1.0 + count)
            key_sum, count = key_sum + np.sum(rest, axis=1), count + rest.shape[1]
    return s, key_sum


def _directions(x: np.ndarray, out: np.ndarray) -> None:
    """``out <- x / |x|`` row-wise (ZS-DEF-COSINE), x and out (b, L, D).

    Rows with a squared norm in range (`_inverse_norms`) are scaled by 1/|x|; the others take
    the reference's `unit`.
    """
    inv, usable = _inverse_norms(x)
    np.multiply(x, inv[..., None], out=out)
    if not usable.all():
        idx = np.nonzero(~usable)
        out[idx] = unit(np, x[idx])


def _bidirectional_rows(q: np.ndarray, k: np.ndarray, v: np.ndarray, s: np.ndarray,
                        gates: tuple[np.ndarray, ...], out: np.ndarray, block: int) -> None:
    """Whole-sequence state ``S = sum_i Kf_i^T v_i`` (3D, Dv), then ``out_t = Qf_t S``.

    Shapes: q, k (b, N, D); v, out (b, N, Dv); s and gates (b, N). The frame is the global
    max M (E >= 1, nothing can underflow to 0/0) and s_ref = s_0.
    """
    b, n, d = q.shape
    first, higher, zero = gates
    top, ref = np.max(s, axis=1), s[:, 0]  # (b,)
    weights = np.exp(s - top[:, None])  # (b, N)
    centred = s - ref[:, None]  # (b, N)
    mean = np.sum(centred, axis=1) / n  # (b,) sbar - s_ref
    a = higher / np.sum(weights, axis=1)[:, None]
    slope = (first - higher) / n
    c = (zero - higher) / n - slope * mean[:, None]
    state = np.zeros((b, 3 * d, v.shape[-1]), q.dtype)  # [F; G; H] in the frame
    feat = np.empty((b, min(block, n), 3 * d), q.dtype)
    for p0 in range(0, n, block):
        p1 = min(p0 + block, n)
        f = feat[:, :p1 - p0]
        _directions(k[:, p0:p1], f[..., 2 * d:])
        np.multiply(f[..., 2 * d:], weights[:, p0:p1, None], out=f[..., :d])
        np.multiply(f[..., 2 * d:], centred[:, p0:p1, None], out=f[..., d:2 * d])
        state += f.swapaxes(-1, -2) @ v[:, p0:p1]  # (b, 3D, L) @ (b, L, Dv)
    for p0 in range(0, n, block):
        p1 = min(p0 + block, n)
        f = feat[:, :p1 - p0]
        _directions(q[:, p0:p1], f[..., 2 * d:])
        np.multiply(f[..., 2 * d:], a[:, p0:p1, None], out=f[..., :d])
        np.multiply(f[..., 2 * d:], slope[:, p0:p1, None], out=f[..., d:2 * d])
        np.multiply(f[..., 2 * d:], c[:, p0:p1, None], out=f[..., 2 * d:])
        np.matmul(f, state, out=out[:, p0:p1])  # (b, L, 3D) @ (b, 3D, Dv)


backend = NumpyBackend()
"""The backend object registered under the entry point ``numpy``."""
