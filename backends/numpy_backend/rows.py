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

__all__ = ["Block", "DenseRows", "Rows"]


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

    q, k (R, n, D); v (R, n, Dv); logits (R, n) or None; gates (R, n) each; out (R, n, Dv).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None
    gates: tuple[np.ndarray, np.ndarray, np.ndarray]
    out: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.q.shape, self.v.shape[-1])

    @property
    def align(self) -> int:
        return 1

    def take(self, rows: slice) -> Block:
        logits = None if self.logits is None else self.logits[rows]
        return Block(self.q[rows], self.k[rows], self.v[rows], logits,
                     tuple(g[rows] for g in self.gates))

    def output(self, rows: slice) -> np.ndarray:
        return self.out[rows]

    def put(self, rows: slice, out: np.ndarray) -> None:
        """Nothing to do: `output` was a view of the call's outputs."""
