"""The default causal logits (ZS-LOG-DEFAULT) as prefix sums of keys in chunk products.

Equal to `zeros_ref.kernel.running_mean_logits` over the whole sequence; the running means
of the keys are formed within chunks of `PREFIX_CHUNK` tokens as one product each with a
lower-triangular matrix of ones, and in pieces of `LOGITS_PIECE` tokens (bounded memory).
"""

from __future__ import annotations

import math

import numpy as np

from zeros_ref.kernel import State, running_mean_logits

from .chunk import chunked
from .frames import counts

__all__ = ["LOGITS_PIECE", "PREFIX_CHUNK", "causal_logits"]

LOGITS_PIECE = 4096
"""Tokens per piece when computing the default logits (bounds their temporary memory)."""
PREFIX_CHUNK = 64
"""Tokens per chunk of the default logits' prefix sums of keys (one product each)."""


def causal_logits(k: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray]:
    """Default causal logits (ZS-LOG-DEFAULT) of k (R, N, D) after `state`, as (R, N), and
    the key sum after k, (R, D).

    The reference's `running_mean_logits`: ``s_i = -<k_i, ubar_i> / sqrt(D)`` with
    ``ubar_i = (key_sum + sum_{j<=i} k_j) / (1 + n + i)``. The prefix sums are formed piece by
    piece (bounded memory), within chunks of C tokens as products with a lower-triangular
    matrix of ones, and the chunks' totals carried; a last partial chunk takes
    `running_mean_logits` itself.
    """
    nrows, n, d = k.shape
    chunk = PREFIX_CHUNK
    ones = np.tri(chunk, dtype=k.dtype)  # (C, C)
    s = np.empty((nrows, n), k.dtype)
    key_sum, count = state.key_sum, counts(state, k.dtype)  # keys before the piece
    if np.ndim(count):  # per row (R,): broadcast against the (R, n) positions
        count = count[:, None]
    for p0 in range(0, n, LOGITS_PIECE):
        piece = k[:, p0:p0 + LOGITS_PIECE]
        whole = piece.shape[1] // chunk * chunk
        if whole:
            # (R, nc, C, D)
            sums = np.matmul(ones, chunked(piece[:, :whole], whole // chunk, chunk))
            totals = sums[:, :, -1]  # (R, nc, D)
            sums += (np.cumsum(totals, axis=1) - totals + key_sum[:, None])[:, :, None]
            sums = sums.reshape(nrows, whole, d)  # key_sum + sum_{j<=i} k_j
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
