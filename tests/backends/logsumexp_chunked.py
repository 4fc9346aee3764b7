"""A correct backend written differently: chunks of 32 stabilised by the log-normaliser.

Instead of a running max it carries L_t = log sum_{j<=t} exp(s_j) (numpy's
logaddexp.accumulate), so every weight is exp(s_i - L_t) <= 1 and the carried F is kept
relative to L at the end of the previous chunk. Computes in float64. The suite must pass it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from _numpy import NumpyArrays, check_state, unit

from zeros_ref.kernel import check_inputs

CHUNK = 32


class LogSumExpChunked(NumpyArrays):
    name = "logsumexp-chunked"
    features = frozenset({"bidirectional", "state", "default_logits"})

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True,
                  state=None, return_state=False):
        inp = check_inputs(q, k, v, logits, first, higher, zero)
        if not causal and (state is not None or return_state):
            raise ValueError("`state` and `return_state` need causal=True")
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (inp.q, inp.k, inp.v))
        gates = [np.asarray(g, dtype=np.float64) for g in (inp.first, inp.higher, inp.zero)]
        batch, d, dv = inp.batch, q.shape[-1], v.shape[-1]
        st = self._start(state, batch, d, dv, str(inp.compute_dtype))
        s = self._logits(inp.logits, k, st, causal)
        if causal:
            out = self._causal(st, unit(q), unit(k), v, s, gates)
        else:
            out = self._bidirectional(unit(q), unit(k), v, s, gates)
        st["key_sum"] = st["key_sum"] + k.sum(axis=-2)
        out = out.astype(inp.dtype)
        return (out, st) if return_state else out

    @staticmethod
    def _start(state: Any, batch: tuple[int, ...], d: int, dv: int,
               dtype: str) -> dict[str, Any]:
        if state is None:
            return {"n": 0, "L": np.full(batch, -np.inf), "mean": np.zeros(batch),
                    "S": np.zeros((*batch, 3, d, dv)), "key_sum": np.zeros((*batch, d)),
                    "dtype": dtype}
        check_state(state, dtype, "S", (*batch, 3, d, dv))
        return dict(state)

    @staticmethod
    def _logits(given: Any, k: np.ndarray, st: dict[str, Any], causal: bool) -> np.ndarray:
        if given is not None:
            return np.asarray(given, dtype=np.float64)
        n = k.shape[-2]
        if causal:
            count = st["n"] + 1.0 + np.arange(1, n + 1)
            kbar = (st["key_sum"][..., None, :] + np.cumsum(k, axis=-2)) / count[:, None]
        else:
            kbar = (k.sum(axis=-2) / (1.0 + n))[..., None, :]
        return -np.sum(k * kbar, axis=-1) / math.sqrt(k.shape[-1])

    def _causal(self, st, qh, kh, v, s, gates) -> np.ndarray:
        n0, n = st["n"], s.shape[-1]
        with np.errstate(invalid="ignore"):
            log_norm = np.logaddexp.accumulate(np.concatenate([st["L"][..., None], s], -1), -1)
        log_norm = log_norm[..., 1:]  # L_t, (*B, N)
        t = n0 + np.arange(1.0, n + 1)
        mean = (n0 * st["mean"][..., None] + np.cumsum(s, axis=-1)) / t  # sbar_t
        outputs = []
        for a in range(0, n, CHUNK):
            z = min(a + CHUNK, n)
            rows = slice(a, z)
            g1, gh, g0 = (g[..., rows] for g in gates)
            tt, lt, mt = t[rows], log_norm[..., rows], mean[..., rows]
            size = z - a
            visible = np.tril(np.ones((size, size), dtype=bool))
            sc = s[..., rows]
            p = np.exp(np.where(visible, sc[..., None, :] - lt[..., :, None], -np.inf))
            f = (sc[..., None, :] - mt[..., :, None]) / tt[:, None]
            r = gh[..., None] * p + (g1 - gh)[..., None] * f + ((g0 - gh) / tt)[..., None]
            w = np.where(visible, r * np.einsum("...td,...id->...ti", qh[..., rows, :],
                                                kh[..., rows, :]), 0.0)
            vc = v[..., rows, :]
            if np.all(np.isfinite(vc)):
                intra = w @ vc
            else:
                intra = np.where(visible[..., None], w[..., None] * vc[..., None, :, :], 0).sum(-2)
            F, G, H = (st["S"][..., j, :, :] for j in range(3))
            with np.errstate(invalid="ignore", over="ignore"):
                decay = np.exp(st["L"][..., None] - lt) if st["n"] else np.zeros_like(lt)
            coef_f = gh * decay
            coef_g = (g1 - gh) / tt
            coef_h = coef_g * (st["mean"][..., None] - mt) + (g0 - gh) / tt
            qc = qh[..., rows, :]
            inter = (coef_f[..., None] * (qc @ F) + coef_g[..., None] * (qc @ G)
                     + coef_h[..., None] * (qc @ H))
            outputs.append(intra + inter)
            self._update(st, kh[..., rows, :], vc, sc, lt[..., -1], mt[..., -1], size)
        return np.concatenate(outputs, axis=-2) if outputs else np.zeros((*s.shape, v.shape[-1]))

    @staticmethod
    def _update(st, kh, v, s, log_norm, mean, size) -> None:
        F, G, H = (st["S"][..., j, :, :] for j in range(3))
        with np.errstate(invalid="ignore", over="ignore"):
            decay = np.exp(st["L"] - log_norm) if st["n"] else np.zeros_like(log_norm)
        w = np.exp(s - log_norm[..., None])
        f = s - mean[..., None]
        kv = np.swapaxes(kh, -1, -2)
        F = decay[..., None, None] * F + (kv * w[..., None, :]) @ v
        G = G + (st["mean"] - mean)[..., None, None] * H + (kv * f[..., None, :]) @ v
        H = H + kv @ v
        # Copies: L and mean are views of (*B, N) arrays a state must not keep alive.
        st.update(n=st["n"] + size, L=log_norm.copy(), mean=mean.copy(),
                  S=np.stack([F, G, H], axis=-3))

    @staticmethod
    def _bidirectional(qh, kh, v, s, gates) -> np.ndarray:
        n = s.shape[-1]
        if n == 0:
            return np.zeros((*s.shape, v.shape[-1]))
        log_norm = np.logaddexp.reduce(s, axis=-1, keepdims=True)
        mean = s.mean(axis=-1, keepdims=True)
        kv = np.swapaxes(kh, -1, -2)
        F = (kv * np.exp(s - log_norm)[..., None, :]) @ v
        G = (kv * (s - mean)[..., None, :]) @ v
        H = kv @ v
        g1, gh, g0 = gates
        return (gh[..., None] * (qh @ F) + ((g1 - gh) / n)[..., None] * (qh @ G)
                + ((g0 - gh) / n)[..., None] * (qh @ H))


backend = LogSumExpChunked()
