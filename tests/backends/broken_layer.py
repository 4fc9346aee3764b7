"""Layers written from the description of spec table 13.1, independently of `zeros_ref.layer`
(only the core is `zeros_ref.attention`), with one knob per known mistake of published code.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| layer | none: the correct twin | (passes every ZS-LAYER-*) |
| authors_rope | interleaved cos/sin tables, half-split rotate_half | ZS-LAYER-ROPE |
| count_tau_plus_i | bidirectional logits over tau + i, not tau + N | ZS-LAYER-REFERENCE |
"""

from __future__ import annotations

import math

import numpy as np
from _numpy import NumpyArrays

import zeros_ref


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rope_tables(n: int, d: int, interleaved_tables: bool) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (N, d) of angle t * 10000^(-2j/d) for pair j, laid out per coordinate."""
    angle = np.arange(n)[:, None] * 10000.0 ** (-np.arange(d // 2) * 2.0 / d)  # (N, d/2)
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


class Layer(NumpyArrays):
    """The layer of spec 13.1 on NumPy arrays, computed in float64."""

    name = "layer"
    features = frozenset({"bidirectional", "default_logits", "layer"})
    authors_rope = False
    count_tau_plus_i = False

    def attention(self, q, k, v, **options):
        return zeros_ref.attention(q, k, v, **options)

    def _rope(self, x: np.ndarray, rope: str | None) -> np.ndarray:
        if rope is None:
            return x
        n, d = x.shape[-2], x.shape[-1]
        if self.authors_rope:  # the published construction, whatever `rope` says
            cos, sin = _rope_tables(n, d, interleaved_tables=True)
            return x * cos + _rotate_half(x) * sin
        cos, sin = _rope_tables(n, d, interleaved_tables=rope == "interleaved")
        turn = _rotate_interleaved if rope == "interleaved" else _rotate_half
        return x * cos + turn(x) * sin

    def _logits(self, u: np.ndarray, mu: np.ndarray, tau: np.ndarray,
                causal: bool) -> np.ndarray:
        """Deviation logits of u (B, H, N, d), prior mu (H, d), tau (H,)."""
        n, d = u.shape[-2], u.shape[-1]
        tau = tau[:, None, None]  # (H, 1, 1)
        if causal or self.count_tau_plus_i:
            total = np.cumsum(u, axis=-2) if causal else u.sum(axis=-2, keepdims=True)
            count = tau + np.arange(1, n + 1)[:, None]  # tau + i
        else:
            total, count = u.sum(axis=-2, keepdims=True), tau + n
        ubar = (tau * mu[:, None, :] + total) / count
        return -np.sum(u * ubar, axis=-1) / math.sqrt(d)

    def layer(self, x, params, *, heads, causal=True, first_layer=False, rope="half",
              norm=True):
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
        s = self._logits(u, p["mu"], np.exp(p["log_tau"]), causal)
        o = zeros_ref.attention(self._rope(q, rope), self._rope(k, rope), v, logits=s,
                                first=_sigmoid(g[..., 0]), higher=_sigmoid(g[..., 1]),
                                zero=zero, causal=causal)
        if norm:
            o = o - o.mean(axis=-1, keepdims=True)
            o = o / np.sqrt((o * o).mean(axis=-1, keepdims=True) + 1e-5)
        merged = np.moveaxis(o, -3, -2).reshape(*batch, n, dm)
        return (merged @ p["wo"] + p["bo"]).astype(dtype)


class AuthorsRope(Layer):
    name = "authors-rope"
    authors_rope = True


class CountTauPlusI(Layer):
    name = "count-tau-plus-i"
    count_tau_plus_i = True


layer = Layer()
authors_rope = AuthorsRope()
count_tau_plus_i = CountTauPlusI()
