"""A backend with gradients (feature "grad") and its broken twin.

`gradients` differentiates the explicit definition by complex steps: each input entry is
moved by i h (h = 1e-30) and the imaginary part of the loss, over h, is its derivative, exact
to rounding (there is no difference to cancel). Every operation of the definition below is
analytic in its inputs (the norm is sqrt(sum(x * x)), the softmax is shifted by the real part
of the max), so the complex evaluation carries the derivative through all of it.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| differentiable | none: the correct twin | (passes ZS-GRAD) |
| detached_default_logits | default logits computed from k as a constant (no gradient) | ZS-GRAD |
"""

from __future__ import annotations

from typing import Any

import numpy as np
from _numpy import NumpyArrays

STEP = 1e-30
"""The imaginary step of complex-step differentiation."""
ARGUMENTS = ("q", "k", "v", "logits", "first", "higher", "zero")


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of `x` over their norm, an analytic function of real or complex entries."""
    norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    nonzero = norm.real > 0
    return np.where(nonzero, x / np.where(nonzero, norm, 1.0), 0.0)


class Differentiable(NumpyArrays):
    """The explicit O(N^2) definition in complex arithmetic, and its gradients."""

    name = "differentiable"
    features = frozenset({"bidirectional", "default_logits", "grad"})

    def default_logits(self, k: np.ndarray, causal: bool) -> np.ndarray:
        """The deviation logits of the raw keys, mu = 0 and tau = 1 (ZS-LOG-DEFAULT)."""
        n, d = k.shape[-2:]
        if causal:
            mean = np.cumsum(k, axis=-2) / (1.0 + np.arange(1, n + 1))[:, None]
        else:
            mean = k.sum(axis=-2, keepdims=True) / (1.0 + n)
        return -np.sum(k * mean, axis=-1) / np.sqrt(d)

    def forward(self, q, k, v, logits, first, higher, zero, causal: bool) -> np.ndarray:
        """out (*B, N, Dv) for real or complex arrays (or Python-number gates)."""
        s = self.default_logits(k, causal) if logits is None else logits
        n = q.shape[-2]
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], s.shape[:-1])
        g1, gh, g0 = (np.broadcast_to(g, (*batch, n))[..., None] for g in (first, higher, zero))
        index = np.arange(n)
        visible = index[None, :] <= index[:, None] if causal else np.ones((n, n), dtype=bool)
        t = (index + 1.0)[:, None] if causal else np.full((n, 1), float(n))
        rows = np.where(visible, s[..., None, :], 0.0)
        peak = np.where(visible, rows.real, -np.inf).max(axis=-1, keepdims=True)
        e = np.where(visible, np.exp(rows - peak), 0.0)
        p = e / e.sum(axis=-1, keepdims=True)
        mean = rows.sum(axis=-1, keepdims=True) / t
        f = np.where(visible, (rows - mean) / t, 0.0)
        z = np.where(visible, 1.0 / t, 0.0)
        r = g1 * f + gh * (p - z - f) + g0 * z
        cos = _unit(q) @ np.swapaxes(_unit(k), -1, -2)
        return np.where(visible, r * cos, 0.0) @ v

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        dtype = q.dtype
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
        s = None if logits is None else np.asarray(logits, dtype=np.float64)
        gates = [g if isinstance(g, float) else np.asarray(g, dtype=np.float64)
                 for g in (first, higher, zero)]
        return self.forward(q, k, v, s, *gates, causal).astype(dtype)

    def gradients(self, q, k, v, cotangent, *, logits, first, higher, zero,
                  causal) -> dict[str, np.ndarray]:
        """d sum(out * cotangent) / d x for every array argument x, by complex steps."""
        inputs = dict(zip(ARGUMENTS, (q, k, v, logits, first, higher, zero)))
        grads = {}
        for name, x in inputs.items():
            if not isinstance(x, np.ndarray):
                continue
            grad = np.zeros(x.shape)
            for index in np.ndindex(x.shape):
                moved = np.array(x, dtype=complex)
                moved[index] += 1j * STEP
                out = self.forward(**{**inputs, name: moved}, causal=causal)
                grad[index] = np.sum(out * cotangent).imag / STEP
            grads[name] = grad
        return grads


class DetachedDefaultLogits(Differentiable):
    """The default logits taken from the keys as constants (as under a no-grad block): the
    gradient with respect to k misses the path through the logits."""

    name = "detached-default-logits"

    def default_logits(self, k: Any, causal: bool) -> np.ndarray:
        return super().default_logits(np.real(k), causal)


differentiable = Differentiable()
detached_default_logits = DetachedDefaultLogits()
