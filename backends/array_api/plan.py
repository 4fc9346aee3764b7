"""The chunk plan of the array-API form: which slot of which chunk holds which token.

The layout is that of the torch form (`zeros_backends.torch_backend.plan`, whose docstring
explains it): a dense call's N tokens then padding; a packed call's sequences in chunks of
their own, so that no chunk spans two sequences. The plan is made on the host with NumPy from
N or the offsets, and the chunks are padded to whole slabs: the scan over slabs then takes
slabs of one shape. Padding chunks continue the last chunk's sequence with no tokens, which
changes no sum and no frame.

Every field is an array, int32 for indices (`Plan` is a tuple of arrays, so ``jax.jit``
takes it as an argument and compiles once per shape, not once per offsets); the host facts
(offsets, lengths) stay with the caller.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Plan", "chunk_plan"]


class Plan(NamedTuple):
    """The layout of a call's tokens in nc chunks of C slots (nc a multiple of the slab).

        segment  (nc,)     int   the sequence of each chunk
        start    (nc,)     bool  the chunk is its sequence's first
        position (nc, C)   int   each slot's token position within its sequence (0-based)
        valid    (nc, C)   bool  the slot holds a token (not padding)
        token    (nc C,)   int   the packed token of each slot (a valid index for padding)
        place    (T,)      int   the slot of each packed token
        first    (S,)      int   the slot of each sequence's first token (0 if empty)
        last     (S,)      int   the slot of each sequence's last token (0 if empty)
        tail     (S,)      int   each sequence's last chunk (0 if empty)
        filled   (S,)      bool  the sequence is not empty
    """

    segment: Any
    start: Any
    position: Any
    valid: Any
    token: Any
    place: Any
    first: Any
    last: Any
    tail: Any
    filled: Any


def chunk_plan(lengths: tuple[int, ...], chunk: int, slab: int, xp: Any = np,
               device: Any = None, *, chunks: int = 0, tokens: int = 0) -> Plan:
    """The plan of sequences of `lengths` (at least one token in all) in chunks of `chunk`
    slots, padded to a multiple of `slab` chunks (and to at least `chunks`, a multiple of
    `slab`), as arrays of `xp` on `device`. `place` is padded to `tokens` entries (slot 0)
    where that is more than the tokens.

    A dense call is one sequence of N tokens (``lengths = (N,)``).
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    per = -(-sizes // chunk)  # chunks per sequence
    real = int(per.sum())
    nc = max(-(-real // slab) * slab, chunks)
    first_chunk = np.cumsum(per) - per  # (S,)
    filled = sizes > 0
    tail = np.where(filled, first_chunk + per - 1, 0)
    segment = np.repeat(np.arange(sizes.shape[0]), per)
    segment = np.concatenate([segment, np.full(nc - real, segment[-1])])
    index = np.arange(nc) - first_chunk[segment]  # chunk within its sequence
    position = index[:, None] * chunk + np.arange(chunk)  # (nc, C)
    valid = (position < sizes[segment][:, None]) & (np.arange(nc) < real)[:, None]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    token = np.minimum(offsets[segment][:, None] + position, max(int(offsets[-1]) - 1, 0))
    slots = np.arange(nc * chunk).reshape(nc, chunk)
    fields = Plan(segment=segment, start=index == 0, position=position, valid=valid,
                  token=token.reshape(-1), place=_padded(slots[valid], tokens),
                  first=np.where(filled, first_chunk * chunk, 0),
                  last=np.where(filled, tail * chunk + (sizes - 1) % chunk, 0), tail=tail,
                  filled=filled)
    fields = Plan(*(x.astype(np.int32) if x.dtype == np.int64 else x for x in fields))
    if xp is np:
        return fields
    return Plan(*(xp.asarray(x, device=device) for x in fields))


def _padded(x: np.ndarray, size: int) -> np.ndarray:
    """`x` (n,) followed by zeros up to `size` entries (unchanged where n >= size)."""
    return np.concatenate([x, np.zeros(max(size - x.shape[0], 0), dtype=x.dtype)])
