"""The fast chunk form of one slab: GEMMs in the slab's shared frame (spec 4.2 steps 4-6).

With the factors of `frames.slab_frames`, a slab of L = nc * C tokens is
flash-linear-attention's chunk form (package docstring):

    P   = tril((q k^T) * (A @ Bm))                  (R, nc, C, C)
    out = [P | Qf] @ [V ; S_{j-1}]                  (R, nc, C, Dv)
    S_j = S_{j-1} + Kf_j^T V_j                      (R, 3D, Dv) per chunk j

with the state S_0 = [e F, H, G + (sbar - s_ref) H] moved into the slab frame. Features
and states are kept in the backend's slot order F, H, G (`frames.SLOT_F` ...), so that a
level slab (b = 0) leaves G out with a slice. Each worker owns a `Workspace`: its buffers
are reused from slab to slab and its views (`Buffers`, `ChunkProducts`) are made once per
shape, as a slab issues some fifty NumPy calls. A thread keeps its workspace from call to
call (`workspace`): buffers of a few MB allocated afresh are mapped anew, or handed back to
the system by the allocator's trimming, and their pages faulted in again on every call (a
packed call at T = 65,536, whose batched calls each made their own, spent a fifth of its
time in the kernel that way).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from zeros_ref.kernel import State

from .frames import SLOT_F, SLOT_G, SLOT_H, Frame, Seq

__all__ = ["KEPT_BYTES", "Buffers", "ChunkProducts", "RunningStep", "Workspace", "chunked",
           "fast_slab", "from_slab_frame", "to_slab_frame", "workspace"]


class RunningStep(NamedTuple):
    """One step of the running sum over chunks, ``S_j += S_{j-1}`` (views of y, (R, pD, Dv)).

    Before the step `s_j` holds the chunk update Kf_j^T V_j; after it, the state S_j.
    """

    s_j: np.ndarray
    s_prev: np.ndarray


class ChunkProducts(NamedTuple):
    """Views for the chunk products of a slab over p state parts (p = 3: F, H, G; p = 2:
    F and H only, for level slabs).

    p_qf : (R, nc, C, C + pD)  X = [P | Qf], the left factor of the outputs.
    v_s : (R, nc, C + pD, Dv)  [V ; S_{j-1}] of chunks 0 .. nc-1, the right factor.
    kf_t : (R, nc, pD, C)  Kf_j^T.
    updates : (R, nc, pD, Dv)  where the chunk updates Kf_j^T V_j go (the S rows of y[:, 1:]).
    running : the nc steps (S_j, S_{j-1}), j = 1 .. nc, of the running sum.
    """

    p_qf: np.ndarray
    v_s: np.ndarray
    kf_t: np.ndarray
    updates: np.ndarray
    running: tuple[RunningStep, ...]


class Buffers(NamedTuple):
    """One worker's buffers for R rows of nc chunks of C tokens, and views into them.

    x : (R, nc, C, C + 3D) holds [P | Qf]; y : (R, nc + 1, C + 3D, Dv) holds [V ; S_j] (slot
    nc holds only the state after the slab); kf : (R, nc, C, 3D) holds Kf; r : (R, nc, C, C)
    the rank-3 weights A @ Bm. Features and states are in the slot order F, H, G.
    ``full`` and ``level`` are the `ChunkProducts` with all three parts and with F and H only.
    The views are made once per shape.
    """

    r: np.ndarray
    p: np.ndarray  # X[..., :C]  (R, nc, C, C)
    qf: tuple[np.ndarray, ...]  # Qf slot j = X[..., C + jD : C + (j+1)D] as (R, L, D)
    kf: tuple[np.ndarray, ...]  # Kf slot j as (R, L, D)
    kg: np.ndarray  # Kf slot SLOT_G (G) transposed  (R, D, L)
    v: np.ndarray  # the V rows of y[:, :nc]  (R, nc, C, Dv)
    s0: np.ndarray  # S_0 = y[:, 0, C:] as (R, 3, D, Dv)
    end: np.ndarray  # the state after the slab, y[:, nc, C:] as (R, 3, D, Dv)
    full: ChunkProducts
    level: ChunkProducts


class Workspace:
    """Buffers of one worker, reused from slab to slab (one set per chunk length C), and
    their views (`Buffers`), made once per shape: a slab issues some fifty NumPy calls.

    `track_g`: whether the state's G is kept. When no slab of the call has a slope b != 0
    and the state is not returned, nothing reads G: it is left out of the work and held at 0
    (harmless where it is read with b = 0, as by the reference's step).
    """

    def __init__(self, dtype: Any, d: int, dv: int, *, track_g: bool = True) -> None:
        self.dtype, self.d, self.dv, self.track_g = dtype, d, dv, track_g
        self._sets: dict[int, tuple[np.ndarray, ...]] = {}
        self._views: dict[tuple[int, int, int], Buffers] = {}
        self._states: tuple[np.ndarray, ...] = ()

    def state_kv(self, nrows: int, avoid: np.ndarray) -> np.ndarray:
        """(R, 3, D, Dv) for the sums of the state after a slab: one of two buffers, the
        one that `avoid` (the sums of the state before it) does not lie in. Slab after slab
        the two take turns, so that no slab allocates (on some machines every fresh
        allocation of this size costs page faults comparable to the slab's products)."""
        if not self._states or self._states[0].shape[0] < nrows:
            shape = (nrows, 3, self.d, self.dv)
            self._states = (np.empty(shape, self.dtype), np.empty(shape, self.dtype))
        first, second = (x[:nrows] for x in self._states)
        return second if np.may_share_memory(first, avoid) else first

    def get(self, nrows: int, nc: int, chunk: int) -> Buffers:
        """Buffers for `nrows` rows of `nc` chunks of `chunk` tokens."""
        views = self._views.get((nrows, nc, chunk))
        if views is not None:
            return views
        held = self._sets.get(chunk)
        d, dv = self.d, self.dv
        if held is None or held[0].shape[0] < nrows or held[0].shape[1] < nc:
            rows, chunks = nrows, nc
            if held is not None:  # grown to hold both shapes: no thrashing between them
                rows, chunks = max(rows, held[0].shape[0]), max(chunks, held[0].shape[1])
            held = (
                np.empty((rows, chunks, chunk, chunk + 3 * d), self.dtype),
                np.empty((rows, chunks, chunk, 3 * d), self.dtype),
                np.empty((rows, chunks + 1, chunk + 3 * d, dv), self.dtype),
                np.empty((rows, chunks, chunk, chunk), self.dtype),
            )
            self._sets[chunk] = held
            self._views.clear()
        x, kf = held[0][:nrows, :nc], held[1][:nrows, :nc]
        y, r = held[2][:nrows, :nc + 1], held[3][:nrows, :nc]
        length = nc * chunk
        qf = _view(x, nrows, length, chunk + 3 * d)[..., chunk:]
        kt = _view(kf, nrows, length, 3 * d)
        kft = kf.swapaxes(-1, -2)  # (R, nc, 3D, C)

        def products(parts: int) -> ChunkProducts:
            width = chunk + parts * d
            return ChunkProducts(
                x[..., :width], y[:, :nc, :width], kft[:, :, :parts * d], y[:, 1:, chunk:width],
                tuple(RunningStep(y[:, j, chunk:width], y[:, j - 1, chunk:width])
                      for j in range(1, nc + 1)))

        views = Buffers(
            r, x[..., :chunk], tuple(qf[..., j * d:(j + 1) * d] for j in range(3)),
            tuple(kt[..., j * d:(j + 1) * d] for j in range(3)),
            kt[..., SLOT_G * d:].swapaxes(1, 2),
            y[:, :nc, :chunk], _view(y[:, 0, chunk:], nrows, 3, d, dv),
            _view(y[:, nc, chunk:], nrows, 3, d, dv), products(3), products(2))
        self._views[nrows, nc, chunk] = views
        return views

    @property
    def key(self) -> tuple[Any, int, int, bool]:
        """What a workspace is made for: (dtype, D, Dv, track_g)."""
        return np.dtype(self.dtype), self.d, self.dv, self.track_g

    @property
    def nbytes(self) -> int:
        """Bytes of its buffers."""
        return sum(x.nbytes for held in self._sets.values() for x in held) + sum(
            x.nbytes for x in self._states)


KEPT_BYTES = 64 * 2**20
"""A thread keeps its workspace for its next call while the buffers take at most this (those of
a dense call take a few MB per worker; those of a packed call's heads of very few tokens, whose
blocks hold many lanes, can take far more, and are let go)."""

_KEPT = threading.local()
"""The workspace each thread keeps between calls (`workspace`)."""


@contextlib.contextmanager
def workspace(dtype: Any, d: int, dv: int, *, track_g: bool) -> Iterator[Workspace]:
    """This thread's `Workspace` for (dtype, D, Dv, track_g) while the block is run: the one
    its last use left where it was made for the same, else a new one. Afterwards the thread
    keeps it for its next use (of this call or of a later one) unless its buffers take more
    than `KEPT_BYTES`. A use within another on the same thread gets a workspace of its own."""
    ws = getattr(_KEPT, "workspace", None)
    _KEPT.workspace = None  # in use
    if ws is None or ws.key != (np.dtype(dtype), d, dv, track_g):
        ws = Workspace(dtype, d, dv, track_g=track_g)
    try:
        yield ws
    finally:
        _KEPT.workspace = ws if ws.nbytes <= KEPT_BYTES else None


def _view(x: np.ndarray, *shape: int) -> np.ndarray:
    """`x` reshaped without a copy (outputs are written through such views)."""
    y = x.reshape(shape)
    if not np.may_share_memory(y, x):
        raise AssertionError(f"a {x.shape} -> {shape} view of strides {x.strides} needs a copy")
    return y


def chunked(x: np.ndarray, nc: int, chunk: int) -> np.ndarray:
    """View (R, nc*C, ...) as (R, nc, C, ...)."""
    return _view(x, x.shape[0], nc, chunk, *x.shape[2:])


@functools.cache
def _causal_mask(chunk: int, dtype: Any) -> np.ndarray:
    """(C, C) lower-triangular ones: key i is visible from query t if i <= t."""
    mask = np.tri(chunk, dtype=dtype)
    mask.flags.writeable = False
    return mask


def fast_slab(ws: Workspace, state: State, seq: Seq, fr: Frame, chunk: int,
               out: np.ndarray, *, owned: bool = False,
               tokens: np.ndarray | None = None) -> State:
    """Outputs (written to `out`, (R, L, Dv)) and the state after one slab, in its frame.

    Shapes: seq arrays (R, L = nc*C, ...); fr one slab of `slab_frames`; state arrays
    (R, ...). Spec 4.2 steps 4-6 as GEMMs (module docstring). The returned state's sums
    lie in the workspace (`Workspace.state_kv`: the next slab overwrites them) unless
    `owned`, where they are a fresh array. Ragged rows (`slab_frames` with `tokens`, the
    same here) add their own token counts to the state's; their padding's outputs are
    not meaningful.
    """
    nrows, length = seq.q.shape[:2]
    nc = length // chunk
    buf = ws.get(nrows, nc, chunk)
    level = bool(fr.level.all())  # b = 0: G adds nothing to the outputs (package docstring)
    rank = 2 if level else 3  # the factors that weigh in the outputs: F, H (and G)
    track_g = ws.track_g or not level
    # Stacked features Qf = [a', c', b] (x) q / |q| into X[..., C:] (without b where level),
    # Kf = [w, 1, s - s_ref] (x) k / |k|  (R, L, 3D) (without G's where it is not kept).
    query, key = fr.query[..., None], fr.key[..., None]  # (R, 3, L, 1)
    for j in range(rank):
        np.multiply(seq.q, query[:, j], out=buf.qf[j])
    for j in range(3 if track_g else 2):
        np.multiply(seq.k, key[:, j], out=buf.kf[j])
    # Step 4: P = tril((q k^T) * (A @ Bm)) into X[..., :C]  (R, nc, C, C).
    np.matmul(chunked(seq.q, nc, chunk), chunked(seq.k, nc, chunk).swapaxes(-1, -2),
              out=buf.p)
    # A (R, nc, C, rank) and Bm (R, nc, rank, C)
    coef = fr.query[:, :rank].reshape(nrows, rank, nc, chunk).transpose(0, 2, 3, 1)
    keys = fr.key[:, :rank].reshape(nrows, rank, nc, chunk).transpose(0, 2, 1, 3)
    r = np.matmul(coef, keys, out=buf.r)
    r *= _causal_mask(chunk, r.dtype)  # every entry of r is finite (`slab_frames`)
    np.multiply(buf.p, r, out=buf.p)
    # Step 5: the prefix state in the slab frame.
    buf.v[...] = chunked(seq.v, nc, chunk)
    to_slab_frame(state, fr, track_g, out=buf.s0)
    # Step 6: chunk updates Kf_j^T V_j (one call for all chunks), running sums S_j, then
    # out = [P | Qf] @ [V ; S_j]; slot nc of y ends as the state after the slab. Where
    # level, G is left out of these and moved to the end of the slab in one product (or
    # left out altogether where it is not kept).
    products = buf.level if level else buf.full
    np.matmul(products.kf_t, buf.v, out=products.updates)
    for s_j, s_prev in products.running:
        s_j += s_prev
    np.matmul(products.p_qf, products.v_s, out=chunked(out, nc, chunk))
    if level and track_g:
        np.add(buf.s0[:, SLOT_G], np.matmul(buf.kg, seq.v), out=buf.end[:, SLOT_G])
    kv = np.empty_like(buf.end) if owned else ws.state_kv(nrows, avoid=state.kv)
    return from_slab_frame(buf.end, fr, state, length if tokens is None else tokens,
                           track_g, out=kv)


def to_slab_frame(state: State, fr: Frame, track_g: bool, *, out: np.ndarray) -> None:
    """The portable state (spec 5.1) in the slab's frame and slot order, into `out`.

    ``S_0 = [e F, H, G + (sbar - s_ref) H]`` in slots F, H, G: F (and E) decayed by
    ``e = exp(m - M)`` to the slab's top M, G moved from the prefix mean to the slab's
    reference logit s_ref. Shapes: state arrays (R, ...), out (R, 3, D, Dv); G's slot is left
    as it is unless `track_g`.
    """
    np.multiply(state.kv[:, State.F], fr.decay[:, None, None], out=out[:, SLOT_F])
    out[:, SLOT_H] = state.kv[:, State.H]
    if track_g:
        np.multiply(state.kv[:, State.H], fr.mean_prev[:, None, None], out=out[:, SLOT_G])
        out[:, SLOT_G] += state.kv[:, State.G]


def from_slab_frame(end: np.ndarray, fr: Frame, state: State, length: int | np.ndarray,
                    track_g: bool, *, out: np.ndarray) -> State:
    """The portable state (spec 5.1) after a slab of `length` tokens (or per row, (R,)),
    from its sums `end`
    (R, 3, D, Dv) in the slab's frame and slot order, its sums written to `out` (same
    shape): F and E stay relative to the slab's top M (the running max after it), G moves
    from s_ref back to the new mean (0 where G is not tracked), and the mean is stored
    relative to M."""
    kv = out  # (R, 3, D, Dv), State's slots F, G, H
    kv[:, State.F], kv[:, State.H] = end[:, SLOT_F], end[:, SLOT_H]
    if track_g:
        np.multiply(end[:, SLOT_H], fr.mean[:, -1, None, None], out=kv[:, State.G])
        np.subtract(end[:, SLOT_G], kv[:, State.G], out=kv[:, State.G])
    else:
        kv[:, State.G] = 0.0
    mean_offset = fr.mean[:, -1] + (fr.ref - fr.top)  # sbar - M
    return State(length=state.length + length, running_max=fr.top, mean_offset=mean_offset,
                 normaliser=fr.normaliser[:, -1], kv=kv, key_sum=state.key_sum)
