"""Deliberately broken backends: each makes one mistake the suite must reject.

Each is the explicit definition with one thing changed (or the reference with its state
corrupted), so that exactly that mistake is what differs from a correct backend.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| first_order_from_probabilities | f = p/t - 1/t^2 instead of the logit form | ZS-DEF-WEIGHTS |
| global_max | exp(s - max over the whole sequence) | ZS-STAB-RANGE |
| quadratic | the N x N definition itself | ZS-ON-TIME, ZS-ON-MEMORY |
| future_mean | first-order mean over the whole sequence when causal | ZS-DEF-CAUSAL |
| swapped_gates | first and higher exchanged | ZS-DEF-GATES |
| ignored_gates | per-step gate arrays replaced by their mean | ZS-DEF-GATES |
| wrong_dtype | returns float64 whatever the input | ZS-DTYPE-OUTPUT |
| nan_on_zero_vectors | divides by |q| and |k| unguarded | ZS-STAB-DEGENERATE |
| forgetful_state | the state forgets how many tokens it has seen | ZS-STREAM-PIECES |
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from _numpy import NumpyArrays, gate, unit

import zeros_ref


class Explicit(NumpyArrays):
    """The O(N^2) definition, with hooks a mutant overrides."""

    name = "explicit"
    features = frozenset({"bidirectional", "default_logits"})

    def cosine(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return unit(q) @ np.swapaxes(unit(k), -1, -2)

    def softmax(self, s: np.ndarray, visible: np.ndarray) -> np.ndarray:
        rows = np.where(visible, s[..., None, :], -np.inf)
        e = np.exp(rows - rows.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def first_order(self, s: np.ndarray, p: np.ndarray, visible: np.ndarray, t: np.ndarray):
        mean = np.where(visible, s[..., None, :], 0.0).sum(-1, keepdims=True) / t
        return np.where(visible, (s[..., None, :] - mean) / t, 0.0)

    def gates(self, first: Any, higher: Any, zero: Any, shape: tuple[int, ...]) -> tuple:
        return gate(first, shape), gate(higher, shape), gate(zero, shape)

    def output(self, out: np.ndarray, q: np.ndarray) -> np.ndarray:
        return out.astype(q.dtype)

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        dtype = q.dtype
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
        s = zeros_ref.deviation_logits(k, causal=causal) if logits is None else logits
        s = np.asarray(s, dtype=np.float64)
        n = q.shape[-2]
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], s.shape[:-1])
        g1, gh, g0 = self.gates(first, higher, zero, (*batch, n))
        index = np.arange(n)
        visible = index[None, :] <= index[:, None] if causal else np.ones((n, n), dtype=bool)
        t = (index + 1.0)[:, None] if causal else np.full((n, 1), float(n))
        p = np.where(visible, self.softmax(s, visible), 0.0)
        z = np.where(visible, 1.0 / t, 0.0)
        f = self.first_order(s, p, visible, t)
        r = g1[..., None] * f + gh[..., None] * (p - z - f) + g0[..., None] * z
        out = (r * self.cosine(q, k)) @ v
        return self.output(out, np.zeros(0, dtype=dtype))


class FirstOrderFromProbabilities(Explicit):
    name = "first-order-from-probabilities"

    def first_order(self, s, p, visible, t):
        return np.where(visible, p / t - 1.0 / t**2, 0.0)


class GlobalMax(Explicit):
    name = "global-max"

    def softmax(self, s, visible):
        e = np.where(visible, np.exp(s - s.max(axis=-1, keepdims=True))[..., None, :], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return e / e.sum(axis=-1, keepdims=True)


class FutureMean(Explicit):
    name = "future-mean"

    def first_order(self, s, p, visible, t):
        return np.where(visible, (s[..., None, :] - s.mean(-1, keepdims=True)[..., None]) / t, 0.0)


class SwappedGates(Explicit):
    name = "swapped-gates"

    def gates(self, first, higher, zero, shape):
        return gate(higher, shape), gate(first, shape), gate(zero, shape)


class IgnoredGates(Explicit):
    name = "ignored-gates"

    def gates(self, first, higher, zero, shape):
        return tuple(np.full(shape, np.mean(gate(g, shape))) for g in (first, higher, zero))


class WrongDtype(Explicit):
    name = "wrong-dtype"

    def output(self, out, q):
        return out


class NanOnZeroVectors(Explicit):
    name = "nan-on-zero-vectors"

    def cosine(self, q, k):
        with np.errstate(invalid="ignore", divide="ignore"):
            qh = q / np.linalg.norm(q, axis=-1, keepdims=True)
            kh = k / np.linalg.norm(k, axis=-1, keepdims=True)
        return qh @ np.swapaxes(kh, -1, -2)


class ForgetfulState(NumpyArrays):
    """The reference, except that the state it returns forgets its length (so 1/t restarts)."""

    name = "forgetful-state"

    def attention(self, q, k, v, **options):
        result = zeros_ref.attention(q, k, v, **options)
        if not options.get("return_state"):
            return result
        out, state = result
        return out, replace(state, length=min(state.length, q.shape[-2]))


first_order_from_probabilities = FirstOrderFromProbabilities()
global_max = GlobalMax()
quadratic = Explicit()
future_mean = FutureMean()
swapped_gates = SwappedGates()
ignored_gates = IgnoredGates()
wrong_dtype = WrongDtype()
nan_on_zero_vectors = NanOnZeroVectors()
forgetful_state = ForgetfulState()
