"""Deliberately broken backends that claim float16: the explicit definition of `broken`
with one mistake in how it treats the input dtype.

`half_twin` is that definition, unchanged, claiming float16 too: it passes every check its
mutants fail, so each failure comes from the planted mistake.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| half_twin | none: the correct twin | (passes them all) |
| unstabilised_exp | p = exp(s) / sum exp(s) in the input dtype, no running max | ZS-DTYPE-HALF, ZS-STAB-RANGE, ZS-STAB-OFFSET |
| half_accumulation | half inputs computed and summed in float16 | ZS-DTYPE-HALF (the check cannot see it yet) |
"""  # noqa: E501  (a table row per backend)

from __future__ import annotations

import numpy as np
from broken import Explicit


class HalfExplicit(Explicit):
    """The explicit definition (computed in float64), claiming float16 as well."""

    name = "half-explicit"
    dtypes = ("float16", "float32", "float64")


class UnstabilisedExp(HalfExplicit):
    """The softmax without its stabiliser (spec section 6, shortcut 1), the exponentials
    taken in the input dtype as a kernel would: float16's exp overflows past s = 11 and
    float32's past 88, and inf / inf is NaN."""

    name = "unstabilised-exp"

    def attention(self, q, k, v, **options):
        self.exp_dtype = q.dtype  # what `softmax` computes in, for this call
        return super().attention(q, k, v, **options)

    def softmax(self, s, visible):
        with np.errstate(all="ignore"):
            e = np.exp(s.astype(self.exp_dtype)).astype(np.float64)
            e = np.where(visible, e[..., None, :], 0.0)
            return e / e.sum(axis=-1, keepdims=True)


class HalfAccumulation(HalfExplicit):
    """Half inputs computed in float16 throughout, every sum accumulated in order in float16
    (spec ZS-DTYPE-HALF asks for float32 accumulation); other dtypes as the definition."""

    name = "half-accumulation"

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        if q.dtype != np.float16:
            return super().attention(q, k, v, logits=logits, first=first, higher=higher,
                                     zero=zero, causal=causal)
        half = np.float16

        def total(x: np.ndarray, axis: int) -> np.ndarray:
            return np.cumsum(x, axis=axis, dtype=half).take([-1], axis=axis)

        cos = self.cosine(q, k).astype(half)
        k64 = np.asarray(k, dtype=np.float64)
        s = (self.default_logits(k64, causal) if logits is None else logits).astype(half)
        n = q.shape[-2]
        g1, gh, g0 = (np.broadcast_to(np.asarray(g, dtype=half), s.shape)[..., None]
                      for g in (first, higher, zero))
        index = np.arange(n)
        visible = index[None, :] <= index[:, None] if causal else np.ones((n, n), dtype=bool)
        t = self.count(n, causal).astype(half)
        rows = np.where(visible, s[..., None, :], half(0))
        e = np.where(visible, np.exp(rows - np.where(visible, rows, -np.inf).max(-1)[..., None]),
                     half(0))
        p = e / total(e, -1)
        f = np.where(visible, (rows - total(rows, -1) / t) / t, half(0))
        z = np.where(visible, half(1) / t, half(0))
        w = np.where(visible, (g1 * f + gh * (p - z - f) + g0 * z) * cos, half(0))
        return total(w[..., :, :, None] * v[..., None, :, :], -2)[..., 0, :]


half_twin = HalfExplicit()
unstabilised_exp = UnstabilisedExp()
half_accumulation = HalfAccumulation()
