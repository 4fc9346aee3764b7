"""Where the rows of a causal call come from and where their outputs go.

The slab form takes rows a block at a time (`NumpyBackend.causal_rows`). A `Rows` source
gives a block's inputs and a place for its outputs: `DenseRows` hands out views of a dense
call's arrays (no copy); `varlen.Lanes` gathers the tokens of a packed call's lanes for the
block alone, so that they are copied into memory the caches hold rather than into a second
array of the call's size.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["ROW_TOKENS", "Block", "DenseRows", "Rows"]

ROW_TOKENS = 2048
"""Rows times slab tokens that go through a slab together (a block of rows): the slab
buffers of 4 rows of 512 tokens, which stay in the caches."""


class Block(NamedTuple):
    """The inputs of a block of b rows of n tokens: q, k (b, n, D), v (b, n, Dv); logits
    (b, n) or None (the default logits); the gates g1, gh, g0, (b, n) each."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None
    gates: tuple[np.ndarray, np.ndarray, np.ndarray]


class Rows(Protocol):
    """R rows of n tokens each, handed out a block of rows at a time."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(R, n, D, Dv)."""

    @property
    def align(self) -> int:
        """Rows come in groups of this many (a block within one group is cheapest)."""

    def take(self, rows: slice) -> Block:
        """The inputs of the rows `rows`."""

    def output(self, rows: slice) -> np.ndarray:
        """Where the outputs (b, n, Dv) of the rows go: written by the caller, then `put`."""

    def put(self, rows: slice, out: np.ndarray) -> None:
        """The outputs of the rows, written to `output(rows)`, are complete."""


class DenseRows(NamedTuple):
    """The rows of a dense call: views of its arrays, outputs written in place.

    q, k (*B, n, D); v (*B, n, Dv); logits (*B, n) or None; gates (*B, n) each, as the
    call broadcast them; out (R, n, Dv), R = prod(*B). The leading axes are not flattened
    (which would copy an array broadcast along them, as k and v of grouped query heads): a
    block of rows within one index of all but the last leading axis is a view, whatever
    the strides; a block across several is stacked from their views (a copy of the block
    alone).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None
    gates: tuple[np.ndarray, np.ndarray, np.ndarray]
    out: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.out.shape[0], self.q.shape[-2], self.q.shape[-1], self.v.shape[-1])

    @property
    def align(self) -> int:
        """The last leading axis: a block within one of its runs is a view."""
        return self.q.shape[-3] if self.q.ndim > 2 else 1

    def take(self, rows: slice) -> Block:
        logits = None if self.logits is None else _rows(self.logits, 1, rows)
        return Block(_rows(self.q, 2, rows), _rows(self.k, 2, rows), _rows(self.v, 2, rows),
                     logits, tuple(_rows(g, 1, rows) for g in self.gates))

    def output(self, rows: slice) -> np.ndarray:
        return self.out[rows]

    def put(self, rows: slice, out: np.ndarray) -> None:
        """Nothing to do: `output` was a view of the call's outputs."""


def _rows(x: np.ndarray, tail: int, rows: slice) -> np.ndarray:
    """Rows `rows` of x (*B, ...) (`tail` trailing axes) with *B flattened: a view where they
    lie in one run of the last leading axis, else the views of each run stacked."""
    batch = x.shape[:x.ndim - tail]
    if len(batch) <= 1:
        return x[rows] if batch else x[None][rows]
    last = batch[-1]
    runs = []
    lo = rows.start
    while lo < rows.stop:
        hi = min(rows.stop, (lo // last + 1) * last)
        index = np.unravel_index(lo // last, batch[:-1])
        runs.append(x[index][lo % last:(hi - 1) % last + 1])
        lo = hi
    return runs[0] if len(runs) == 1 else np.concatenate(runs)
