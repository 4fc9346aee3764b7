"""The NumPy backend: the chunked form of spec 4.2 as BLAS products (entry point ``numpy``).

It must equal the reference form, `zeros_ref.attention` (spec section 4.2 causal, 4.3
bidirectional), to the tolerance of spec 7.1. One algorithm, the reference's. Validation, the
`State`, the default logits and the exact per-row chunk step are the reference's own, taken
from its public kernel API `zeros_ref.kernel`; this package only re-arranges the chunk step
so that nearly all of its work is matrix products. Dimension names: R = prod(*B) rows (batch
and heads), N tokens, C chunk length, L = (chunks per slab) * C, D and Dv.

Layout
------
``__init__``       `NumpyBackend`: validation, flattening, causal and bidirectional dispatch
``frames``         frame statistics of slabs, and when a frame is exact
``chunk``          the GEMM chunk form of one slab and its per-worker workspace
``paths``          slabs in sequence; rows on the fast path and on the reference's step
``logits``         the default causal logits as prefix sums in chunk products
``bidirectional``  the whole-sequence form (spec 4.3)
``rows``           where a call's rows come from (views, or a packed call's gathered lanes)
``threads``        row groups and worker threads
``varlen``         packed calls (spec 5.2): the sequences as rows of a few batched calls

Only the names in ``__all__`` here are the backend's interface; the modules' names are
internal to the package.

The fast variant: one frame per slab (spec 4.2, steps 1-6)
----------------------------------------------------------
The reference gives every query row t its own frame: exponents relative to its running max
m_t and the mean logit relative to sbar_t. That makes the C x C weights an elementwise
formula. Here every row of a slab of L tokens (several chunks) shares one frame:

    M     = max(m_prev, max of the slab's logits)       (the slab's top, >= every m_t)
    s_ref = s of the slab's first key                   (visible to every row of the slab)
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
state [F; G; H] moved into the slab frame, and the state after chunk j
``S_j = S_{j-1} + Kf_j^T V_j``: GEMMs plus a few elementwise passes (`chunk`). The per-row
statistics (M, E', sbar, the factors) of all slabs are computed up front, vectorised over
slabs, with a scan over slabs for the prefix sums (`frames`).

Where b_t = 0 on every row of a slab ("level" slabs: first gate = higher gate, as with the
default gates), G weighs nothing in the slab's outputs: its D columns of Qf and D rows of
S_j are left out of the chunk products (a quarter of the largest one) and G's update is added
in one product over the whole slab at its end. When every slab of a call is level and the
state is not returned, nothing reads G at all, and it is not kept. Factors, features and the
state in the workspace are kept in the order F, H, G, so that leaving G out is a slice.

Rows of a slab the shared frame cannot represent exactly (`frames`, "When the frame is
exact") are redone chunk by chunk and, where still needed, by the reference's exact step
(`paths`).

Speed
-----
Leading axes are flattened to one axis of R rows and split between worker threads (NumPy and
BLAS release the GIL); each worker issues single-threaded BLAS calls on (R/workers, chunks,
C, .) stacks and reuses its buffers from slab to slab: working memory is
O(R L (C + D + Dv)) plus O(R N) per-token statistics, never N x N or N x D x Dv. float16
inputs are computed in float32 and rounded once (ZS-DTYPE-HALF).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from zeros_machine import blas_limitable, cpus
from zeros_ref.kernel import (
    State,
    check_call,
    check_default_logits,
    deviation_logits,
    merge_states,
)

from .bidirectional import bidirectional_rows
from .chunk import Workspace, workspace
from .frames import Seq, spread_limit
from .logits import causal_logits
from .paths import FAST, REFERENCE, causal_slabs
from .rows import ROW_TOKENS, DenseRows, Rows
from .threads import map_groups, row_groups
from .varlen import packed_bidirectional, packed_causal

__all__ = ["FAST", "REFERENCE", "ROW_TOKENS", "NumpyBackend", "backend", "spread_limit"]



class NumpyBackend:
    """ZeroS attention on NumPy arrays at BLAS speed (spec section 10 protocol).

    Parameters
    ----------
    chunk_size : int
        C, the length of the chunks whose C x C weights are formed explicitly.
    slab_size : int
        Chunks per slab: the tokens (L = slab_size * C) that share one frame and whose
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
    features = frozenset({"bidirectional", "state", "default_logits", "varlen", "merge"})
    device = "cpu"

    def __init__(self, *, chunk_size: int = 64, slab_size: int = 8,
                 workers: int | None = None) -> None:
        self.chunk_size = chunk_size
        self.slab_size = slab_size
        self.workers = workers
        self.last_paths: Counter = Counter()
        self._paths_lock = threading.Lock()

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
        cu_seqlens: np.ndarray | None = None,
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
        cu_seqlens : (S + 1,) integer array or None
            Offsets of S sequences packed along the time axis (spec 5.2); `state` then holds
            one state per sequence, leading axes (S, *B). Computed in batched calls
            (`varlen`), never one per sequence.

        Returns
        -------
        output : (..., N, Dv) array of the input dtype; state : State, if `return_state`.

        Notes
        -----
        The chunked form of spec 4.2 with one frame per slab of tokens (package docstring);
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
                                causal=causal, state=state, return_state=return_state,
                                cu_seqlens=cu_seqlens)
        if not isinstance(inp.q, np.ndarray):
            raise TypeError(f"the numpy backend takes NumPy arrays; got {type(q).__name__}")
        batch, n, dv = inp.batch, inp.n, inp.v.shape[-1]
        self.last_paths = Counter()
        if n == 0:
            out = np.zeros((*batch, 0, dv), dtype=inp.dtype)
            return (out, start) if return_state else out
        with np.errstate(all="ignore"):  # no warnings from the internals (spec 8)
            if inp.offsets is not None:  # packed sequences (spec 5.2)
                if causal:
                    flat, end = packed_causal(self, inp, start, return_state=return_state)
                else:
                    flat, end = packed_bidirectional(self, inp), None
                out = flat.reshape(*batch, n, dv).astype(inp.dtype, copy=False)
                if return_state:
                    count = len(inp.offsets) - 1
                    return out, end.with_batch(np, (count, *batch))
                return out
            if causal:
                flat, end = self._causal(inp, start.with_batch(np, (math.prod(batch),)),
                                         return_state=return_state)
            else:
                flat, end = self._bidirectional(inp), None
        out = flat.reshape(*batch, n, dv).astype(inp.dtype, copy=False)
        if return_state:
            return out, end.with_batch(np, batch)
        return out

    def merge_states(self, states: Sequence[State]) -> State:
        """The state of the concatenation of pieces from their states, in sequence order
        (spec 5.3): the reference's merge, which runs on NumPy arrays as it is."""
        return merge_states(states)

    # -- causal ---------------------------------------------------------------------------------

    def _run(self, fn: Callable[[slice], Any], nrows: int, n: int) -> tuple[list[slice], list]:
        """``fn`` on row groups of the R rows: one per worker for calls of at least two slabs'
        worth of row-tokens (with single-threaded BLAS), else one group as it comes."""
        big = nrows * n >= 2 * self.chunk_size * self.slab_size
        workers = self.workers or cpus()
        if not big or not blas_limitable():
            workers = 1
        groups = row_groups(nrows, max(1, min(workers, nrows)))

        def quiet(group: slice) -> Any:  # a worker thread starts with NumPy's default errstate
            with np.errstate(all="ignore"):
                return fn(group)

        return groups, map_groups(quiet, groups, single_blas=big)

    def _spans(self, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(start, stop, L, C) of runs of equal slabs: whole slabs, whole chunks, the rest."""
        chunk, slab = self.chunk_size, self.chunk_size * self.slab_size
        whole = n - n % slab
        if whole:
            yield 0, whole, slab, chunk
        tail = whole + (n - whole) // chunk * chunk
        if tail > whole:
            yield whole, tail, tail - whole, chunk
        if n > tail:
            yield tail, n, n - tail, n - tail

    def _causal(self, inp: Any, start: State, *,
                return_state: bool) -> tuple[np.ndarray, State]:
        """Causal outputs (R, N, Dv) and the final state (R rows): the rows of the leading
        axes, taken a block at a time (`DenseRows`: views, even of broadcast k and v)."""
        nrows, n, dv = math.prod(inp.batch), inp.n, inp.v.shape[-1]
        out = np.empty((nrows, n, dv), inp.compute_dtype)
        rows = DenseRows(inp.q, inp.k, inp.v, inp.logits,
                         (inp.first, inp.higher, inp.zero), out)
        track_g = return_state or not np.array_equal(inp.first, inp.higher)
        end = self.causal_rows(rows, start, spans=list(self._spans(n)),
                               return_state=return_state, track_g=track_g,
                               track_keys=return_state)
        return out, end

    def causal_rows(self, rows: Rows, start: State, *, spans: list[tuple[int, int, int, int]],
                    return_state: bool, track_g: bool, track_keys: bool,
                    threads: bool = True) -> State:
        """Causal outputs (written through `rows`) and final state of R rows of n tokens
        each, from `start` (R rows; its `length` an int, or one count per row), the tokens
        cut into `spans` (start, stop, L, C) of equal slabs (`_spans`). Adds the rows' paths
        to `last_paths`.

        The rows go through the slabs a block at a time (`ROW_TOKENS`), so that a slab's
        buffers stay in the caches however many rows a call has. Parts of the state that
        nothing reads are not kept: the key sum unless `track_keys` (it is read by the
        default logits, which form it anyway, and where returned) and G unless `track_g`
        (read where first != higher). Each thread reuses the buffers it kept from its last
        call (`chunk.workspace`). Without `threads` the rows run on the calling thread (which
        may be a worker already).
        """
        nrows, n, d, dv = rows.shape
        index = np.arange(nrows)
        block = _block(ROW_TOKENS // max(length for _, _, length, _ in spans), rows.align)

        def run_group(group: slice) -> tuple[State, Counter]:
            paths, parts = Counter(), []
            # blocks end at multiples of `block`, whatever the group's start
            edges = [group.start, *range(-(-group.start // block) * block or block,
                                         group.stop, block), group.stop]
            with workspace(start.kv.dtype, d, dv, track_g=track_g) as ws:
                for lo, hi in itertools.pairwise(dict.fromkeys(edges)):
                    part = slice(lo, hi)
                    parts.append((index[part], run_block(ws, part, paths)))
            return (parts[0][1] if len(parts) == 1 else State.merge(parts)), paths

        def run_block(ws: Workspace, part: slice, paths: Counter) -> State:
            x, state = rows.take(part), start.rows(part)
            if x.logits is None:
                s, key_sum = causal_logits(x.k, state)
                check_default_logits(np, s, x.k, state.key_sum)
            else:
                s, key_sum = x.logits, state.key_sum
                if track_keys:
                    key_sum = key_sum + np.sum(x.k, axis=1)
            seq, out = Seq(x.q, x.k, x.v, s, *x.gates), rows.output(part)
            for p0, p1, length, chunk in spans:
                state = causal_slabs(ws, state, seq.span(p0, p1), length, chunk,
                                      out[:, p0:p1], paths)
            rows.put(part, out)
            # A returned state gets copies: the slabs' fields are views of per-call buffers
            # whose size grows with N, which it must not keep alive (ZS-ON-STATE), and its
            # sums lie in the workspace, which the next block overwrites. (Without
            # `return_state` the state returned is not read.)
            keep = np.copy if return_state else (lambda x: x)
            return State(length=state.length, running_max=keep(state.running_max),
                         mean_offset=keep(state.mean_offset),
                         normaliser=keep(state.normaliser), kv=keep(state.kv),
                         key_sum=keep(key_sum))

        return self.run_groups(run_group, nrows, n, threads=threads)

    def run_groups(self, run_group: Callable[[slice], tuple[State, Counter]], nrows: int,
                   n: int, *, threads: bool) -> State:
        """The state of `nrows` rows of n tokens from ``run_group(rows) -> (state, paths)``:
        on row groups shared between the worker threads (`_run`) with `threads`, else on
        all rows here; the paths counted, the groups' states joined in row order."""
        if threads:
            groups, results = self._run(run_group, nrows, n)
        else:
            groups = [slice(0, nrows)]
            results = [run_group(groups[0])]
        self.count_paths(p for _, p in results)
        if len(groups) == 1:
            return results[0][0]
        return State.merge([(np.arange(g.start, g.stop), st)
                            for g, (st, _) in zip(groups, results)])

    def count_paths(self, counts: Iterable[Counter]) -> None:
        """Add row-token counts to `last_paths` (from any thread: the pieces of a packed call
        run on several)."""
        with self._paths_lock:
            for c in counts:
                self.last_paths.update(c)

    # -- bidirectional --------------------------------------------------------------------------

    def _bidirectional(self, inp: Any) -> np.ndarray:
        """Bidirectional outputs (R, N, Dv): one whole-sequence frame (spec 4.3)."""
        nrows, n = math.prod(inp.batch), inp.n
        d, dv = inp.q.shape[-1], inp.v.shape[-1]
        q, k = inp.q.reshape(nrows, n, d), inp.k.reshape(nrows, n, d)
        v = inp.v.reshape(nrows, n, dv)
        if inp.logits is None:
            s = deviation_logits(k, causal=False)  # (R, N), ZS-LOG-DEFAULT
            check_default_logits(np, s, k)
        else:
            s = inp.logits.reshape(nrows, n)
        gates = tuple(g.reshape(nrows, n) for g in (inp.first, inp.higher, inp.zero))
        out = np.empty((nrows, n, dv), inp.compute_dtype)
        slab = self.chunk_size * self.slab_size

        def run_group(group: slice) -> None:
            bidirectional_rows(q[group], k[group], v[group], s[group],
                               tuple(x[group] for x in gates), out[group], slab)

        self._run(run_group, nrows, n)
        return out


def _block(rows: int, align: int) -> int:
    """Rows per block: about `rows` (at least 1), and a divisor or a multiple of `align`, so
    that blocks that end at multiples of it hold whole groups of `align` rows or lie in one."""
    rows = max(rows, 1)
    if rows >= align:
        return rows // align * align
    return max(j for j in range(1, align + 1) if align % j == 0 and j <= rows)


backend = NumpyBackend()
"""The backend object registered under the entry point ``numpy``."""
