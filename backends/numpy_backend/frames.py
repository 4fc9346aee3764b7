"""Frame statistics: one frame per slab of L tokens, and whether it is exact (spec 4.2 1-3).

Every row of a slab shares the frame (M, s_ref) of the package docstring; this module
computes the per-slab and per-token statistics of all slabs of a span at once (vectorised
over slabs, a scan over slabs for the prefix sums), the factors A and Bm of the rank-3
weights, and the test below of which rows the frame represents exactly.

When the frame is exact
-----------------------
Let tiny be the smallest normal number of the compute dtype and ``T = -log(tiny) / 2``
(43.7 for float32, 354 for float64). Every row's own max obeys
``m_t >= m_lo = max(m_prev, s_ref)``, so ``E'_t >= exp(m_lo - M)``. A slab row takes the fast
path when

1. the spread ``M - m_lo <= T``: then E'_t >= sqrt(tiny) and a'_t is finite, and a weight
   that matters to row t (``p[t,i] >= tiny^(3/8)``) is ``w_i = p[t,i] E'_t >= tiny^(7/8)``;
2. every q and k row has ``|x|^2 = 0`` or ``tiny^(1/4) <= |x|^2 <= tiny^(-1/4)``, so that
   ``1/|x|`` lies in [tiny^(1/8), tiny^(-1/8)] and the folded factor ``w_i / |k_i|`` of a
   weight that matters is still a normal number (full relative precision); a zero row has
   direction zero, as in the reference;
3. ``sum_j max|A_j| max|Bm_j| <= max / 8`` (max the largest finite number), a bound on
   every entry of ``A @ Bm`` (masked ones included), so nothing overflows; and every input
   of the slab is finite (a NaN fails a comparison; for v their sum is tested).

Weights that underflow have p < tiny^(3/8) and move outputs by less than that times the
output scale. The b and c' terms are as exact as the reference's because s_ref and sbar_t
are both visible to row t: |s_i - s_ref| and |sbar_t - s_ref| never exceed the range of the
logits row t sees, which is what the tolerance of spec 7.1 scales with (spec 6, item 3). One
loss is not covered: gates so small (below tiny^(7/8)) that their factors underflow.

Rows of a slab that fail are redone chunk by chunk, each chunk with its own frame (M and
s_ref of the chunk), and rows of a chunk that still fail run the reference's exact per-row
step, `zeros_ref.kernel.causal_step`, which also keeps a NaN or infinity at
position i out of the outputs before i (ZS-ERR-NONFINITE). Between slabs the state is the
reference's `State` in the reference's frame, so the paths interleave freely (`paths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from zeros_ref.kernel import State

__all__ = [
    "SLOT_F",
    "SLOT_G",
    "SLOT_H",
    "Frame",
    "Seq",
    "counts",
    "inverse_norms",
    "prefix_scan",
    "slab_frames",
    "spread_limit",
]

SLOT_F, SLOT_H, SLOT_G = 0, 1, 2
"""Slots of the state parts in the backend's own order F, H, G (not `State`'s F, G, H): the
factors of `Frame` and the features and slab-frame states of `chunk`, so that leaving G
out is a slice."""


def spread_limit(dtype: Any) -> float:
    """Largest spread ``M - m_lo`` of logits one frame may cover: ``-log(tiny) / 2``."""
    return -math.log(float(np.finfo(dtype).tiny)) / 2


@dataclass(frozen=True)
class Seq:
    """Inputs of R rows over n consecutive tokens, in the compute dtype.

    q, k : (R, n, D); v : (R, n, Dv); s, first, higher, zero : (R, n).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    s: np.ndarray
    first: np.ndarray
    higher: np.ndarray
    zero: np.ndarray

    def rows(self, idx: np.ndarray) -> Seq:
        """The rows `idx` (copies)."""
        return Seq(*(x[idx] for x in self._fields()))

    def span(self, start: int, stop: int) -> Seq:
        """Tokens ``start:stop`` (views)."""
        return Seq(*(x[:, start:stop] for x in self._fields()))

    @property
    def gates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.first, self.higher, self.zero

    def _fields(self) -> tuple[np.ndarray, ...]:
        return self.q, self.k, self.v, self.s, self.first, self.higher, self.zero


class Frame(NamedTuple):
    """Statistics of every row of nb slabs of L tokens, each slab in its own frame.

    Per slab, (R, nb): top M, ref s_ref, decay ``exp(m_prev - M)``, mean_prev
    ``sbar_prev - s_ref``, ok (the row takes the fast path), level (the slope b is 0 on
    the whole slab: g1 = gh). Per token, (R, nb, L): normaliser E'_t, mean
    ``sbar_t - s_ref``. Factors (R, nb, 3, L), in the slots `SLOT_F`, `SLOT_H`, `SLOT_G` of
    the state parts they weight: query ``[a', c', b] / |q|``; key ``[w, 1, s - s_ref] / |k|``.
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

    def slab(self, j: int) -> Frame:
        """Slab j alone: per-slab fields (R,), per-token fields (R, L) or (R, 3, L)."""
        return Frame(*(x[:, j] for x in self))

    def rows(self, idx: np.ndarray) -> Frame:
        return Frame(*(x[idx] for x in self))


def inverse_norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``1/|x|`` of every row of x (R, n, D), 0 for zero rows; and which rows are in range.

    In range: a zero row, or ``tiny^(1/4) <= |x|^2 <= tiny^(-1/4)`` (module docstring, 2).
    A row whose squared norm underflows to 0 without being zero (entries near 1e-25 in
    float32) is out of range, not zero: its direction is the reference's `unit`, which
    rescales first. Returns two (R, n) arrays.
    """
    sq = np.einsum("bnd,bnd->bn", x, x)  # (R, n)
    tiny = float(np.finfo(x.dtype).tiny)
    usable = (sq >= tiny**0.25) & (sq <= tiny**-0.25)
    inv = np.zeros_like(sq)
    np.divide(1.0, np.sqrt(sq, where=usable, out=inv), where=usable, out=inv)
    vanished = sq == 0  # (R, n): zero rows, and rows whose squares all underflow
    if vanished.any():
        vanished[vanished] = ~x[vanished].any(axis=-1)
    return inv, usable | vanished


def prefix_scan(state: State, ref: np.ndarray, top: np.ndarray, slab_sum: np.ndarray,
                slab_mean: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """The prefix of every slab in its frame: a scan over slabs on (R,) rows (spec 4.2.3).

    Shapes: ref, top (R, nb); slab_sum (R, nb) ``sum_i w_i`` of the slab; slab_mean
    (R, nb) ``sum_i (s_i - s_ref)`` of the slab. The state's count is an int, or one per row
    (R,) (`counts`). Returns (R, nb) arrays: m_prev (the slab's own first logit for an empty
    prefix), decay, E'_prev and mean_prev.
    """
    m_prev, decay, e_prev, mean_prev = (np.zeros_like(top) for _ in range(4))
    n = counts(state, top.dtype)
    held = n > 0  # () or (R,): the row's prefix holds tokens
    m, e = state.running_max, state.normaliser
    mean = state.mean_offset + (m - ref[:, 0])  # sbar - s_ref of slab 0 (mean: sbar - m)
    for j in range(top.shape[1]):
        step = np.exp(m - top[:, j])
        m_prev[:, j] = np.where(held, m, ref[:, j])
        decay[:, j] = np.where(held, step, 0.0)
        e_prev[:, j] = np.where(held, e * step, 0.0)
        mean_prev[:, j] = np.where(held, mean, 0.0)
        # The state after slab j, in its frame; mean moved to the next slab's s_ref.
        m, e = top[:, j], e_prev[:, j] + slab_sum[:, j]
        mean = (n * mean_prev[:, j] + slab_mean[:, j]) / (n + length)
        if j + 1 < top.shape[1]:
            mean = mean + (ref[:, j] - ref[:, j + 1])
        n, held = n + length, True
    return m_prev, decay, e_prev, mean_prev


def counts(state: State, dtype: Any) -> Any:
    """n, the tokens before the rows: the state's int `length`, or its per-row counts (R,)
    as an array of `dtype` (a packed call's rows, `varlen`)."""
    if isinstance(state.length, int):
        return state.length
    return np.asarray(state.length, dtype=dtype)


def _max_abs(x: np.ndarray) -> np.ndarray:
    """``max |x|`` over the last axis without a temporary; NaN if x holds one."""
    return np.maximum(np.max(x, axis=-1), -np.min(x, axis=-1))


def slab_frames(state: State, seq: Seq, length: int, *,
                tokens: np.ndarray | None = None) -> Frame:
    """Frames of the nb = n / L slabs of `seq` (R rows, n tokens) that follow `state` (spec
    4.2 steps 1-3). Every field of the result has leading axes (R, nb).

    With `tokens` (R,), values in 1..L, the rows are ragged: one slab (n = L) of which row r
    holds only its first tokens[r], the rest padding with zero keys and values, as in
    `zeros_ref.kernel.causal_step` with `lengths`. The padding then repeats the statistics of
    the row's last real token (its weight is 0, its logit counts as the slab's first, its
    count t stops), so that the frame's last entries, which `chunk.from_slab_frame` reads,
    are those after the row's own last token.
    """
    nrows, n = seq.s.shape
    nb = n // length
    if tokens is not None and nb != 1:
        raise ValueError(f"ragged rows take one slab; got {nb} of {length} tokens")

    def slabs(x: np.ndarray) -> np.ndarray:  # (R, n, ...) -> (R, nb, L, ...)
        return x.reshape(nrows, nb, length, *x.shape[2:])

    s = slabs(seq.s)  # (R, nb, L)
    prior = counts(state, s.dtype)  # n: an int, or per row (R,)
    per_row = np.ndim(prior) > 0
    ahead = prior[:, None, None] if per_row else prior
    t = ahead + np.arange(1, n + 1, dtype=s.dtype).reshape(nb, length)  # 1-based, (.., nb, L)
    real = None
    if tokens is not None:
        real = slabs(np.arange(n) < tokens[:, None])  # (R, 1, L)
        s = np.where(real, s, s[..., :1])
        t = np.minimum(t, ahead + tokens[:, None, None].astype(s.dtype))
    # Step 1: each slab's top M, a running max over slabs.
    ref = s[..., 0]  # (R, nb)
    top = np.maximum.accumulate(np.max(s, axis=-1), axis=1)  # (R, nb)
    held = prior > 0  # the prefix holds tokens: its running max counts
    if np.any(held):
        top = np.where(held[:, None] if per_row else held,
                       np.maximum(top, state.running_max[:, None]), top)
    # Steps 2-3: weights, E'_t and sbar_t - s_ref, with the prefix of each slab. The key
    # factors [w, 1, s - s_ref] are written in place and divided by |k| once used.
    key = np.empty((nrows, nb, 3, length), s.dtype)  # (R, nb, 3, L)
    weights, centred = key[:, :, SLOT_F], key[:, :, SLOT_G]
    np.exp(np.subtract(s, top[..., None], out=weights), out=weights)
    if real is not None:
        weights *= real
    np.subtract(s, ref[..., None], out=centred)
    key[:, :, SLOT_H] = 1.0
    normaliser = np.cumsum(weights, axis=-1)  # (R, nb, L), completed below
    mean = np.cumsum(centred, axis=-1)  # (R, nb, L), completed below
    m_prev, decay, e_prev, mean_prev = prefix_scan(
        state, ref, top, normaliser[..., -1], mean[..., -1], length)
    normaliser += e_prev[..., None]
    count = (prior[:, None] if per_row else prior) + length * np.arange(nb)  # before each slab
    mean += (count * mean_prev)[..., None]
    mean /= t  # sbar_t - s_ref
    # Spec 4.1: coefficients [a', c', b], c' absorbing the move of the mean to s_ref.
    query = np.empty_like(key)  # (R, nb, 3, L)
    higher = slabs(seq.higher)
    np.divide(higher, normaliser, out=query[:, :, SLOT_F])  # a'_t = gh_t / E'_t
    b = np.subtract(slabs(seq.first), higher, out=query[:, :, SLOT_G])
    b /= t  # b_t = (g1_t - gh_t) / t
    level = ~b.any(axis=-1)  # (R, nb)
    c_prime = np.subtract(slabs(seq.zero), higher, out=query[:, :, SLOT_H])
    c_prime /= t
    c_prime -= b * mean  # c'_t = (g0_t - gh_t) / t - b_t (sbar_t - s_ref)
    inv_q, q_ok = inverse_norms(seq.q)
    inv_k, k_ok = inverse_norms(seq.k)
    query *= slabs(inv_q)[..., None, :]
    key *= slabs(inv_k)[..., None, :]
    # Which rows of which slabs the frame represents exactly (module docstring, 1-3).
    dtype = s.dtype
    ok = top - np.maximum(m_prev, ref) <= spread_limit(dtype)
    bound = np.sum(_max_abs(query) * _max_abs(key), axis=-1)
    ok &= bound <= np.finfo(dtype).max / 8
    ok &= slabs(q_ok).all(axis=-1) & slabs(k_ok).all(axis=-1)
    # Every v finite: their sum is finite if they are (one that overflows merely sends a
    # finite slab to the exact path).
    ok &= np.isfinite(np.sum(seq.v.reshape(nrows, nb, -1), axis=-1))
    return Frame(top, ref, decay, mean_prev, ok, level, normaliser, mean, query, key)
