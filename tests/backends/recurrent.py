"""A correct backend written differently: a token-by-token recurrence in float64.

It keeps the mean logit directly and updates the centred sum G by Welford's rule, and it
carries the running max token by token. Slow (a Python loop over N) but O(N) and O(1) per
decode step. The suite must pass it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from _numpy import NumpyArrays, check_state, unit

from zeros_ref.kernel import check_inputs


class Recurrent(NumpyArrays):
    name = "recurrent"
    features = frozenset({"bidirectional", "state", "default_logits"})

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True,
                  state=None, return_state=False):
        inp = check_inputs(q, k, v, logits, first, higher, zero)
        if not causal and (state is not None or return_state):
            raise ValueError("`state` and `return_state` need causal=True")
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (inp.q, inp.k, inp.v))
        g1, gh, g0 = (np.asarray(g, dtype=np.float64) for g in (inp.first, inp.higher, inp.zero))
        d, dv = q.shape[-1], v.shape[-1]
        st = self._start(state, inp.batch, d, dv, str(inp.compute_dtype))
        explicit = None if inp.logits is None else np.asarray(inp.logits, dtype=np.float64)
        if not causal and explicit is None:
            kbar = k.sum(axis=-2) / (1.0 + k.shape[-2])
            explicit = -np.einsum("...nd,...d->...n", k, kbar) / math.sqrt(d)
        outputs = []
        for t in range(q.shape[-2]):
            self._absorb(st, k[..., t, :], v[..., t, :],
                         None if explicit is None else explicit[..., t])
            if causal:
                outputs.append(self._read(st, q[..., t, :], g1[..., t], gh[..., t], g0[..., t]))
        if not causal:
            outputs = [self._read(st, q[..., t, :], g1[..., t], gh[..., t], g0[..., t])
                       for t in range(q.shape[-2])]
        out = np.stack(outputs, axis=-2) if outputs else np.zeros((*inp.batch, 0, dv))
        out = out.astype(inp.dtype)
        return (out, st) if return_state else out

    @staticmethod
    def _start(state: Any, batch: tuple[int, ...], d: int, dv: int,
               dtype: str) -> dict[str, Any]:
        if state is None:
            zeros = np.zeros(batch)
            return {"n": 0, "m": zeros, "E": zeros, "mean": zeros,
                    "F": np.zeros((*batch, d, dv)), "G": np.zeros((*batch, d, dv)),
                    "H": np.zeros((*batch, d, dv)), "key_sum": np.zeros((*batch, d)),
                    "dtype": dtype}
        check_state(state, dtype, "H", (*batch, d, dv))
        return {name: np.copy(value) for name, value in state.items()}

    @staticmethod
    def _absorb(st: dict[str, Any], k: np.ndarray, v: np.ndarray, s: np.ndarray | None) -> None:
        st["n"] += 1
        n = st["n"]
        st["key_sum"] = st["key_sum"] + k
        if s is None:
            s = -np.sum(k * st["key_sum"], axis=-1) / (1.0 + n) / math.sqrt(k.shape[-1])
        m = s if n == 1 else np.maximum(st["m"], s)
        kv = unit(k)[..., :, None] * v[..., None, :]  # (*B, D, Dv)
        decay = np.exp(st["m"] - m) if n > 1 else np.zeros_like(m)
        weight = np.exp(s - m)
        st["F"] = decay[..., None, None] * st["F"] + weight[..., None, None] * kv
        st["E"] = decay * st["E"] + weight
        mean = st["mean"] + (s - st["mean"]) / n
        st["G"] = (st["G"] + (st["mean"] - mean)[..., None, None] * st["H"]
                   + (s - mean)[..., None, None] * kv)
        st["H"] = st["H"] + kv
        st["m"], st["mean"] = m, mean

    @staticmethod
    def _read(st: dict[str, Any], q: np.ndarray, g1, gh, g0) -> np.ndarray:
        n = st["n"]
        a, b, c = gh / st["E"], (g1 - gh) / n, (g0 - gh) / n
        total = (a[..., None, None] * st["F"] + b[..., None, None] * st["G"]
                 + c[..., None, None] * st["H"])
        return np.einsum("...d,...de->...e", unit(q), total)


backend = Recurrent()
