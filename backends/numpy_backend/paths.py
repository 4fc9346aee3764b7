"""Slabs in sequence, and the rows of a slab that take the exact reference step.

Each slab's rows that pass the frame test (`frames`, "When the frame is exact") take the
GEMM form (`chunk.fast_slab`, path `FAST`); the others are redone chunk by chunk, a frame
per chunk, and rows of a chunk that still fail run `zeros_ref.kernel.causal_step` (path
`REFERENCE`). Rows are split with `State.rows` and joined again with `State.merge`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from zeros_ref.kernel import State, causal_step

from .chunk import Workspace, fast_slab
from .frames import Seq, slab_frames

__all__ = ["FAST", "REFERENCE", "causal_slabs", "reference_chunk"]

FAST = "fast"
"""Path name of row-tokens computed in a shared frame (the GEMM form)."""
REFERENCE = "reference"
"""Path name of row-tokens computed by the reference's per-row chunk step."""


def reference_chunk(state: State, seq: Seq, out: np.ndarray) -> State:
    """The reference's exact per-row chunk step (`causal_step`); `out` (R, C, Dv)."""
    out[...], state = causal_step(np, state, seq.q, seq.k, seq.v, seq.s, seq.gates)
    return state


def causal_slabs(ws: Workspace, state: State, seq: Seq, length: int, chunk: int,
                  out: np.ndarray, paths: Counter) -> State:
    """Outputs (into `out`, (R, n, Dv)) and final state of slabs of L tokens, L = nc*C.

    Rows that pass the frame test of a slab take `fast_slab`; the others are redone chunk
    by chunk (slabs of one chunk, a frame each), and in a single chunk by the reference.
    `paths` counts the row-tokens of each path.
    """
    with np.errstate(all="ignore"):  # rows whose statistics overflow fail the test
        fr = slab_frames(state, seq, length)
    nrows = seq.s.shape[0]
    for j in range(fr.ok.shape[1]):
        span = seq.span(j * length, (j + 1) * length)
        dest = out[:, j * length:(j + 1) * length]
        ok = fr.ok[:, j]
        if ok.all():
            paths[FAST] += nrows * length
            state = fast_slab(ws, state, span, fr.slab(j), chunk, dest)
            continue
        parts = []
        good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
        if good.size:
            paths[FAST] += good.size * length
            part = np.empty((good.size, length, out.shape[-1]), out.dtype)
            st = fast_slab(ws, state.rows(good), span.rows(good), fr.rows(good).slab(j),
                            chunk, part, owned=True)  # kept while the others are redone
            dest[good] = part
            parts.append((good, st))
        part = np.empty((bad.size, length, out.shape[-1]), out.dtype)
        st, sub = state.rows(bad), span.rows(bad)
        if length > chunk:
            st = causal_slabs(ws, st, sub, chunk, chunk, part, paths)
        else:
            paths[REFERENCE] += bad.size * length
            st = reference_chunk(st, sub, part)
        dest[bad] = part
        parts.append((bad, st))
        state = State.merge(parts)
    return state
