"""Layers written from the description of spec table 13.1, independently of `zeros_ref.layer`
(only the core is `zeros_ref.attention`), with one knob per known mistake of published code.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| layer | none: the correct twin | (passes every ZS-LAYER-*) |
| authors_rope | interleaved cos/sin tables, half-split rotate_half | ZS-LAYER-ROPE |
| count_tau_plus_i | bidirectional logits over tau + i, not tau + N | ZS-LAYER-REFERENCE |
| whole_sequence_mean | causal logits from the mean of u over the whole sequence | ZS-LAYER-CAUSAL |
| streaming_layer | none: the correct twin, with "state" | (passes every ZS-LAYER-*) |
| rope_restarts | streaming, but RoPE positions restart at 0 in every call | ZS-LAYER-STREAM |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from _numpy import NumpyArrays

import zeros_ref


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rope_tables(n: int, d: int, interleaved_tables: bool,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (N, d) of angle t * 10000^(-2j/d) for pair j at positions t = offset ..
    offset + N - 1, laid out per coordinate."""
    t = np.arange(offset, offset + n)[:, None]
    angle = t * 10000.0 ** (-np.arange(d // 2) * 2.0 / d)  # (N, d/2)
    if interleaved_tables:  # coordinates 2j and 2j+1 share angle j
        angle = np.repeat(angle, 2, axis=-1)
    else:  # coordinates j and j + d/2 share angle j
        angle = np.concatenate([angle, angle], axis=-1)
    return np.cos(angle), np.sin(angle)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotate_interleaved(x: np.ndarray) -> np.ndarray:
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return np.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


@dataclass(frozen=True)
class Prefix:
    """What a streamed layer carries: the core state of every head (leading axes (*B, H)),
    the sum of u per head (*B, H, d) and the number of tokens seen."""

    core: Any
    u_sum: np.ndarray
    length: int


class Layer(NumpyArrays):
    """The layer of spec 13.1 on NumPy arrays, computed in float64."""

    name = "layer"
    features = frozenset({"bidirectional", "default_logits", "layer"})
    authors_rope = False
    count_tau_plus_i = False
    whole_sequence_mean = False
    rope_restarts = False

    def attention(self, q, k, v, **options):
        return zeros_ref.attention(q, k, v, **options)

    def _rope(self, x: np.ndarray, rope: str | None, offset: int) -> np.ndarray:
        if rope is None:
            return x
        n, d = x.shape[-2], x.shape[-1]
        offset = 0 if self.rope_restarts else offset
        if self.authors_rope:  # the published construction, whatever `rope` says
            cos, sin = _rope_tables(n, d, interleaved_tables=True, offset=offset)
            return x * cos + _rotate_half(x) * sin
        cos, sin = _rope_tables(n, d, interleaved_tables=rope == "interleaved", offset=offset)
        turn = _rotate_interleaved if rope == "interleaved" else _rotate_half
        return x * cos + turn(x) * sin

    def _logits(self, u: np.ndarray, mu: np.ndarray, tau: np.ndarray, causal: bool,
                prefix: Prefix | None) -> np.ndarray:
        """Deviation logits of u (B, H, N, d), prior mu (H, d), tau (H,), continuing the
        sums of a streamed `prefix` where there is one."""
        n, d = u.shape[-2], u.shape[-1]
        tau = tau[:, None, None]  # (H, 1, 1)
        seen, before = (0, 0.0) if prefix is None else (prefix.length, prefix.u_sum[..., None, :])
        if causal and self.whole_sequence_mean:  # the mean of every token, the future's too
            total, count = u.sum(axis=-2, keepdims=True), tau + n
        elif causal or self.count_tau_plus_i:
            total = np.cumsum(u, axis=-2) if causal else u.sum(axis=-2, keepdims=True)
            count = tau + seen + np.arange(1, n + 1)[:, None]  # tau + i
        else:
            total, count = u.sum(axis=-2, keepdims=True), tau + n
        ubar = (tau * mu[:, None, :] + before + total) / count
        return -np.sum(u * ubar, axis=-1) / math.sqrt(d)

    def layer(self, x, params, *, heads, causal=True, first_layer=False, rope="half",
              norm=True, state=None, return_state=False):
        if not causal and (state is not None or return_state):
            raise ValueError("`state` and `return_state` need causal=True")
        dtype = x.dtype
        x = np.asarray(x, dtype=np.float64)
        p = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
        *batch, n, dm = x.shape
        d = dm // heads

        def split(y: np.ndarray) -> np.ndarray:  # (*B, N, Dm) -> (*B, H, N, d)
            return np.moveaxis(y.reshape(*batch, n, heads, d), -2, -3)

        q, k, v, u = (split(x @ p[f"w{c}"] + p[f"b{c}"]) for c in "qkvu")
        g = np.moveaxis((x @ p["wg"] + p["bg"]).reshape(*batch, n, heads, 3), -3, -2)
        zero = np.tanh(g[..., 2]) if first_layer else 0.0
        s = self._logits(u, p["mu"], np.exp(p["log_tau"]), causal, state)
        offset = 0 if state is None else state.length
        streamed = {} if state is None and not return_state else {
            "state": None if state is None else state.core, "return_state": return_state}
        o = zeros_ref.attention(self._rope(q, rope, offset), self._rope(k, rope, offset), v,
                                logits=s, first=_sigmoid(g[..., 0]), higher=_sigmoid(g[..., 1]),
                                zero=zero, causal=causal, **streamed)
        if return_state:
            o, core = o
        if norm:
            o = o - o.mean(axis=-1, keepdims=True)
            o = o / np.sqrt((o * o).mean(axis=-1, keepdims=True) + 1e-5)
        merged = np.moveaxis(o, -3, -2).reshape(*batch, n, dm)
        out = (merged @ p["wo"] + p["bo"]).astype(dtype)
        if not return_state:
            return out
        u_sum = u.sum(axis=-2) + (0.0 if state is None else state.u_sum)
        return out, Prefix(core, u_sum, offset + n)


class AuthorsRope(Layer):
    name = "authors-rope"
    authors_rope = True


class CountTauPlusI(Layer):
    name = "count-tau-plus-i"
    count_tau_plus_i = True


class WholeSequenceMean(Layer):
    name = "whole-sequence-mean"
    whole_sequence_mean = True


class StreamingLayer(Layer):
    """The same layer, claiming "state": ZS-LAYER-STREAM applies."""

    name = "streaming-layer"
    features = frozenset({"bidirectional", "default_logits", "layer", "state"})


class RopeRestarts(StreamingLayer):
    name = "rope-restarts"
    rope_restarts = True


layer = Layer()
authors_rope = AuthorsRope()
count_tau_plus_i = CountTauPlusI()
whole_sequence_mean = WholeSequenceMean()
streaming_layer = StreamingLayer()
rope_restarts = RopeRestarts()
