"""Packed-sequence backends with one planted mistake each (spec 5.2, feature "varlen").

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| packed_explicit | none: the definition over the packed row, sequences masked apart | (twin) |
| carried_max | exponents relative to a max carried across boundaries | ZS-VARLEN-ISOLATION |
| carried_mean | the first-order mean over the packed prefix, not the sequence's | ZS-VARLEN-EQUAL |
| off_by_one | each boundary one token late | ZS-VARLEN-EQUAL |
| unchecked_offsets | offsets cast to integers, never validated | ZS-ERR-VARLEN |
| mixed_states | each sequence continues from its neighbour's state | ZS-VARLEN-STATE |
| pads_to_longest | every sequence padded to the longest, one dense call | ZS-ON-VARLEN |
| core_only_layer | a packed layer whose RoPE positions and prior means run on | ZS-LAYER-VARLEN |

The correct twin of the last three is the `reference` backend, which claims "varlen".
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
from _numpy import NumpyArrays, gate

import zeros_ref
from zeros_ref.kernel import check_call


class PackedExplicit(NumpyArrays):
    """The O(N^2) definition over the whole packed row, a token seeing only the keys of its
    own sequence (and, causal, none after it); hooks for each planted mistake."""

    name = "packed-explicit"
    dtypes = ("float32", "float64")
    features = frozenset({"bidirectional", "default_logits", "varlen"})

    def offsets(self, cu_seqlens: Any, q: Any, k: Any, v: Any) -> np.ndarray:
        inp, _ = check_call(q, k, v, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True,
                            state=None, return_state=False, cu_seqlens=cu_seqlens)
        return np.asarray(inp.offsets)

    def sequence_of(self, offsets: np.ndarray, n: int) -> np.ndarray:
        """(N,) the sequence of every token."""
        return np.searchsorted(offsets[1:], np.arange(n), side="right")

    def frame(self, s: np.ndarray, visible: np.ndarray, causal: bool) -> np.ndarray:
        """(*B, N) the logit each row's exponents are taken relative to."""
        return np.where(visible, s[..., None, :], -np.inf).max(axis=-1)

    def mean(self, s: np.ndarray, visible: np.ndarray, count: np.ndarray) -> np.ndarray:
        """(*B, N) the mean logit of each row's visible keys."""
        return np.where(visible, s[..., None, :], 0.0).sum(-1) / count

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True,
                  cu_seqlens=None):
        dtype = q.dtype
        offsets = self.offsets(cu_seqlens, q, k, v) if cu_seqlens is not None else None
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
        n = q.shape[-2]
        offsets = np.array([0, n]) if offsets is None else offsets
        if logits is None:
            s = np.concatenate([zeros_ref.deviation_logits(k[..., a:b, :], causal=causal)
                                for a, b in pairwise(offsets)], axis=-1)
        else:
            s = np.asarray(logits, dtype=np.float64)
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], s.shape[:-1])
        g1, gh, g0 = (gate(g, (*batch, n)) for g in (first, higher, zero))
        seq = self.sequence_of(offsets, n)
        index = np.arange(n)
        visible = seq[:, None] == seq[None, :]
        if causal:
            visible &= index[None, :] <= index[:, None]
        count = visible.sum(-1).astype(np.float64)  # (N,) n_t of each row
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            e = np.where(visible, np.exp(s[..., None, :] - self.frame(s, visible, causal)[
                ..., None]), 0.0)
            p = e / e.sum(-1, keepdims=True)
        f = np.where(visible, (s[..., None, :] - self.mean(s, visible, count)[..., None])
                     / count[:, None], 0.0)
        z = np.where(visible, 1.0 / count[:, None], 0.0)
        r = g1[..., None] * f + gh[..., None] * (p - z - f) + g0[..., None] * z
        cos = zeros_ref.kernel.unit(np, q) @ np.swapaxes(zeros_ref.kernel.unit(np, k), -1, -2)
        # A masked sum, not a product: 0 * inf in another sequence's v would be NaN.
        terms = (r * cos)[..., None] * v[..., None, :, :]  # (*B, N, N, Dv)
        out = np.where(visible[..., None], terms, 0.0).sum(axis=-2)
        return out.astype(dtype)


class CarriedMax(PackedExplicit):
    name = "carried-max"

    def frame(self, s, visible, causal):
        index = np.arange(s.shape[-1])
        everything_before = index[None, :] <= index[:, None] if causal else True
        return np.where(everything_before, s[..., None, :], -np.inf).max(axis=-1)


class CarriedMean(PackedExplicit):
    name = "carried-mean"

    def mean(self, s, visible, count):
        n = s.shape[-1]
        before = np.arange(n)[None, :] <= np.arange(n)[:, None]
        return np.where(before, s[..., None, :], 0.0).sum(-1) / before.sum(-1)


class OffByOne(PackedExplicit):
    name = "off-by-one"

    def sequence_of(self, offsets, n):
        late = offsets.copy()
        late[1:-1] = np.minimum(late[1:-1] + 1, n)
        return super().sequence_of(late, n)


class UncheckedOffsets(PackedExplicit):
    name = "unchecked-offsets"

    def offsets(self, cu_seqlens, q, k, v):
        return np.asarray(cu_seqlens).astype(np.int64).ravel()


class _Reference(NumpyArrays):
    """`zeros_ref` on NumPy arrays, with the features of a packed streaming backend."""

    dtypes = ("float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits", "varlen", "layer"})

    def attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        return zeros_ref.attention(q, k, v, **options)

    def layer(self, x: Any, params: Any, **options: Any) -> Any:
        return zeros_ref.layer(x, params, **options)


class MixedStates(_Reference):
    name = "mixed-states"

    def attention(self, q, k, v, *, state=None, **options):
        if state is not None and state.packed and len(state.length) > 1:
            count = len(state.length)
            state = zeros_ref.State.stack(np, [state.sequence((j + 1) % count)
                                               for j in range(count)])
        return zeros_ref.attention(q, k, v, state=state, **options)


class PadsToLongest(_Reference):
    """Right-pads every sequence to the longest and makes one dense call over them all
    (correct outputs for causal calls, at the cost of S times the longest length)."""

    name = "pads-to-longest"
    features = frozenset({"default_logits", "varlen"})

    def attention(self, q, k, v, *, cu_seqlens=None, logits=None, **options):
        if cu_seqlens is None:
            return zeros_ref.attention(q, k, v, logits=logits, **options)
        offsets = np.asarray(cu_seqlens)
        spans = list(pairwise(int(o) for o in offsets))
        longest = max((b - a for a, b in spans), default=0)

        def padded(x: Any, vectors: bool) -> Any:
            if x is None or not isinstance(x, np.ndarray):
                return x
            rows = []
            for a, b in spans:
                part = x[..., a:b, :] if vectors else x[..., a:b]
                width = [(0, 0)] * part.ndim
                width[-2 if vectors else -1] = (0, longest - (b - a))
                rows.append(np.pad(part, width))
            return np.stack(rows)

        gates = {name: padded(options.pop(name, default), False)
                 for name, default in (("first", 1.0), ("higher", 1.0), ("zero", 0.0))}
        out = zeros_ref.attention(padded(q, True), padded(k, True), padded(v, True),
                                  logits=padded(logits, False), **gates, **options)
        return np.concatenate([out[j, ..., : b - a, :] for j, (a, b) in enumerate(spans)],
                              axis=-2)


class CoreOnlyLayer(_Reference):
    """Packs only the core: projections, deviation logits and RoPE run over the whole packed
    row, so positions and prior means carry across boundaries."""

    name = "core-only-layer"
    features = frozenset({"bidirectional", "default_logits", "varlen", "layer"})

    def layer(self, x, params, *, cu_seqlens=None, **options):
        if cu_seqlens is None:
            return zeros_ref.layer(x, params, **options)

        def core(q, k, v, **kw):
            return zeros_ref.attention(q, k, v, cu_seqlens=cu_seqlens, **kw)

        return zeros_ref.layer(x, params, attention=core, **options)


packed_explicit = PackedExplicit()
carried_max = CarriedMax()
carried_mean = CarriedMean()
off_by_one = OffByOne()
unchecked_offsets = UncheckedOffsets()
mixed_states = MixedStates()
pads_to_longest = PadsToLongest()
core_only_layer = CoreOnlyLayer()
