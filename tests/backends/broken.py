"""Deliberately broken backends: each makes one mistake the suite must reject.

Each is the explicit definition with one thing changed (or the reference with its state
corrupted), so that exactly that mistake is what differs from a correct backend. `quadratic`
is the definition unchanged: the correct twin of the others (tests/test_mutants.py). More
mutants: broken_api.py (protocol, keywords, bad input, state, long sequences),
broken_half.py (float16), broken_grad.py (gradients), broken_layer.py (the layer).

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
| cumulative_sums | holds cumulative sums of kh v^T, an (N, D, Dv) array | ZS-ON-MEMORY |
| history_state | the state keeps every token and recomputes from them | ZS-ON-DECODE, ZS-ON-STATE |
| spreads_v_nan | masked weights times v chunk by chunk (0 * inf) | ZS-ERR-NONFINITE-V (SHOULD) |
| drops_zero_gate | the zero-order gate never applied (g0 as 0) | ZS-DEF-SOFTMAX, ZS-DEF-ZEROSUM |
| zero_order_leaks | h = p - f: the zero-order term never removed | ZS-DEF-ZEROSUM, ZS-DEF-SOFTMAX |
| uncentred_first_order | f = s_i / n, no mean logit subtracted | ZS-DEF-SHIFT, ZS-DEF-ZEROSUM |
| bidirectional_counts_t | bidirectional rows over t, not N | ZS-DEF-BIDIRECTIONAL |
| default_count_i | default logits' key mean over i, not 1 + i | ZS-LOG-DEFAULT |
| zero_keys_as_padding | default logits' key mean counts nonzero keys only | ZS-ACC-GOLDEN |
| masks_with_product | weights masked by a product, not a select (0 * NaN) | ZS-ERR-NONFINITE |
| naive_norms | directions x / sqrt(sum(x * x)) in the input dtype | ZS-STAB-MAGNITUDE |
| raises_bidirectional | raises RuntimeError when `causal=False` | error, with the case |
| crashes_bidirectional | dies of SIGSEGV when `causal=False` | (the run dies; its report stays) |
| hangs_when_long | sleeps for an hour on over 10^4 tokens | ZS-STAB-LONG (time limit) |
| allocates_when_long | allocates 4 GiB on over 10^4 tokens | ZS-STAB-LONG (memory cap) |
| crashes_when_long | dies of SIGSEGV on over 10^4 tokens | ZS-STAB-LONG (child dies) |
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any

import numpy as np
from _numpy import NumpyArrays, gate
from array_api_compat import array_namespace

import zeros_ref
from zeros_ref import kernel
from zeros_ref.kernel import check_inputs


def unit(x: np.ndarray) -> np.ndarray:
    """Unit rows of `x` in its dtype, exact at any scale, zero rows kept zero (a squared
    norm past the dtype's range is rescaled, not an error: no warning)."""
    with np.errstate(over="ignore", under="ignore"):
        return kernel.unit(array_namespace(x), x)


class Explicit(NumpyArrays):
    """The O(N^2) definition, with hooks a mutant overrides."""

    name = "explicit"
    features = frozenset({"bidirectional", "default_logits"})

    def directions(self, x: np.ndarray) -> np.ndarray:
        """Unit rows of an input array (of the input dtype) in float64."""
        return unit(np.asarray(x, dtype=np.float64))

    def cosine(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.directions(q) @ np.swapaxes(self.directions(k), -1, -2)

    def default_logits(self, k: np.ndarray, causal: bool) -> np.ndarray:
        return zeros_ref.deviation_logits(k, causal=causal)

    def count(self, n: int, causal: bool) -> np.ndarray:
        """n_t of every row, (N, 1): t (causal) or N (bidirectional)."""
        return (np.arange(n) + 1.0)[:, None] if causal else np.full((n, 1), float(n))

    def softmax(self, s: np.ndarray, visible: np.ndarray) -> np.ndarray:
        rows = np.where(visible, s[..., None, :], -np.inf)
        e = np.exp(rows - rows.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def first_order(self, s: np.ndarray, p: np.ndarray, visible: np.ndarray, t: np.ndarray):
        mean = np.where(visible, s[..., None, :], 0.0).sum(-1, keepdims=True) / t
        return np.where(visible, (s[..., None, :] - mean) / t, 0.0)

    def combine(self, g1, gh, g0, p, z, f) -> np.ndarray:
        """r = g1 f + gh h + g0 z with h = p - z - f; gates (*B, N), the rest (*B, N, N)."""
        return g1[..., None] * f + gh[..., None] * (p - z - f) + g0[..., None] * z

    def gates(self, first: Any, higher: Any, zero: Any, shape: tuple[int, ...]) -> tuple:
        return gate(first, shape), gate(higher, shape), gate(zero, shape)

    def masked(self, visible: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The weights outside P(t) set to 0 with a select, so non-finite ones stay out."""
        return np.where(visible, w, 0.0)

    def output(self, out: np.ndarray, q: np.ndarray) -> np.ndarray:
        return out.astype(q.dtype)

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        dtype = q.dtype
        cos = self.cosine(q, k)
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
        s = self.default_logits(k, causal) if logits is None else logits
        s = np.asarray(s, dtype=np.float64)
        n = q.shape[-2]
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], s.shape[:-1])
        g1, gh, g0 = self.gates(first, higher, zero, (*batch, n))
        index = np.arange(n)
        visible = index[None, :] <= index[:, None] if causal else np.ones((n, n), dtype=bool)
        t = self.count(n, causal)
        p = np.where(visible, self.softmax(s, visible), 0.0)
        z = np.where(visible, 1.0 / t, 0.0)
        f = self.first_order(s, p, visible, t)
        out = self.masked(visible, self.combine(g1, gh, g0, p, z, f) * cos) @ v
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
        q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            qh = q / np.linalg.norm(q, axis=-1, keepdims=True)
            kh = k / np.linalg.norm(k, axis=-1, keepdims=True)
        return qh @ np.swapaxes(kh, -1, -2)


class DropsZeroGate(Explicit):
    """The zero-order gate read but never applied: g0 acts as 0 (the softmax limit loses
    its uniform part)."""

    name = "drops-zero-gate"

    def combine(self, g1, gh, g0, p, z, f):
        return super().combine(g1, gh, np.zeros_like(g0), p, z, f)


class ZeroOrderLeaks(Explicit):
    """The higher-order residual taken as p - f: the zero-order term z is never removed."""

    name = "zero-order-leaks"

    def combine(self, g1, gh, g0, p, z, f):
        return g1[..., None] * f + gh[..., None] * (p - f) + g0[..., None] * z


class UncentredFirstOrder(Explicit):
    """f = s_i / n: the first-order term without the mean logit subtracted."""

    name = "uncentred-first-order"

    def first_order(self, s, p, visible, t):
        return np.where(visible, s[..., None, :] / t, 0.0)


class BidirectionalCountsT(Explicit):
    """Bidirectional rows divided by t, the causal count, instead of N."""

    name = "bidirectional-counts-t"

    def count(self, n, causal):
        return super().count(n, True)


class DefaultCountI(Explicit):
    """Default logits with the running mean of the keys over i, not 1 + i (tau = 0)."""

    name = "default-count-i"

    def default_logits(self, k, causal):
        n, d = k.shape[-2:]
        if causal:
            mean = np.cumsum(k, axis=-2) / np.arange(1.0, n + 1)[:, None]
        else:
            mean = k.sum(axis=-2, keepdims=True) / max(n, 1)
        return -np.sum(k * mean, axis=-1) / np.sqrt(d)


class ZeroKeysAsPadding(Explicit):
    """Zero keys taken for padding in the default logits: the running mean of the keys
    counts only nonzero ones (1 + their number, not 1 + i). Random keys are never zero, so
    only the golden case of zero keys with default logits sees it."""

    name = "zero-keys-as-padding"

    def default_logits(self, k, causal):
        d = k.shape[-1]
        real = np.any(k != 0, axis=-1)[..., None]  # (*B, N, 1)
        if causal:
            total, count = np.cumsum(k, axis=-2), 1.0 + np.cumsum(real, axis=-2)
        else:
            total, count = k.sum(axis=-2, keepdims=True), 1.0 + real.sum(axis=-2, keepdims=True)
        return -np.sum(k * total / count, axis=-1) / np.sqrt(d)


class MasksWithProduct(Explicit):
    """Weights outside P(t) zeroed by a product with the mask: 0 * NaN is NaN, so a
    non-finite q, k, logit or gate at position i reaches rows t < i."""

    name = "masks-with-product"

    def masked(self, visible, w):
        return visible * w


class NaiveNorms(Explicit):
    """Unit directions x / sqrt(sum(x * x)) in the input dtype: a squared norm that
    underflows or overflows makes the direction 0."""

    name = "naive-norms"

    def directions(self, x):
        with np.errstate(all="ignore"):
            norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
            unit = np.where(norm > 0, x / norm, 0.0)
        return unit.astype(np.float64)


class ForgetfulState(NumpyArrays):
    """The reference, except that the state it returns forgets its length (so 1/t restarts)."""

    name = "forgetful-state"

    def attention(self, q, k, v, **options):
        result = zeros_ref.attention(q, k, v, **options)
        if not options.get("return_state"):
            return result
        out, state = result
        return out, replace(state, length=min(state.length, q.shape[-2]))


class CumulativeSums(NumpyArrays):
    """Right outputs, but the zero-order term read from cumulative sums of kh_i v_i^T kept
    as one (*B, N, D, Dv) array: the shape of the authors' linear-time path."""

    name = "cumulative-sums"
    features = frozenset({"bidirectional", "default_logits"})

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        inp = check_inputs(q, k, v, logits, first, higher, zero)
        out = zeros_ref.attention(q, k, v, logits=logits, first=first, higher=higher, zero=0.0,
                                  causal=causal)
        n = q.shape[-2]
        kv = np.cumsum(unit(k)[..., :, None] * v[..., None, :], axis=-3)  # (*B, N, D, Dv)
        if not causal:
            kv = np.broadcast_to(kv[..., -1:, :, :], kv.shape)
        count = np.arange(1.0, n + 1) if causal else np.full(n, float(n))
        g0 = np.broadcast_to(inp.zero, out.shape[:-1]) / count  # (*B, N)
        zero_order = np.einsum("...nd,...nde->...ne", unit(q), kv) * g0[..., None]
        return (out + zero_order).astype(out.dtype)


class HistoryState(NumpyArrays):
    """Right outputs, but the "state" is every key, value and logit so far: each call runs
    the reference again over the whole history (O(context) per decode step)."""

    name = "history-state"
    features = frozenset({"bidirectional", "state", "default_logits"})

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True,
                  state=None, return_state=False):
        inp = check_inputs(q, k, v, logits, first, higher, zero)
        if not causal or (state is None and not return_state):
            return zeros_ref.attention(q, k, v, logits=logits, first=first, higher=higher,
                                       zero=zero, causal=causal, state=state,
                                       return_state=return_state)
        batch, n, d, dv = inp.batch, q.shape[-2], q.shape[-1], v.shape[-1]
        if state is None:
            state = {"k": np.zeros((*batch, 0, d), inp.dtype),
                     "v": np.zeros((*batch, 0, dv), inp.dtype),
                     "logits": None if logits is None else np.zeros((*batch, 0), inp.dtype)}
        if not isinstance(state, dict):
            raise TypeError(f"`state` must be this backend's; got {type(state).__name__}")
        if state["k"].dtype != inp.dtype:
            raise TypeError(f"`state` holds {state['k'].dtype} tokens, not {inp.dtype}")
        if state["k"].shape[:-2] != batch or state["k"].shape[-1] != d or \
                state["v"].shape[-1] != dv:
            raise ValueError(f"`state` does not fit leading axes {batch}, D={d}, Dv={dv}")
        seen = state["k"].shape[-2]

        def joined(old: np.ndarray, new: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
            return np.concatenate([old, np.broadcast_to(new, (*batch, n, *tail))], axis=-2
                                  if tail else -1)

        history = {"k": joined(state["k"], inp.k, (d,)), "v": joined(state["v"], inp.v, (dv,)),
                   "logits": None if logits is None else joined(state["logits"], inp.logits, ())}
        gates = {name: joined(np.ones((*batch, seen), inp.dtype), g, ())
                 for name, g in (("first", inp.first), ("higher", inp.higher),
                                 ("zero", inp.zero))}
        queries = joined(np.zeros((*batch, seen, d), inp.dtype), inp.q, (d,))
        out = zeros_ref.attention(queries, history["k"], history["v"], logits=history["logits"],
                                  **gates)[..., seen:, :]
        return out, history


class SpreadsVNan(Explicit):
    """Chunks of 16 rows times the values so far, `where(i <= t, W, 0) @ V` as a fused kernel
    computes: a masked zero times an infinite v_i is NaN in rows t < i of v_i's chunk."""

    name = "spreads-v-nan"

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=True):
        s = zeros_ref.deviation_logits(k, causal=causal) if logits is None else logits
        r = zeros_ref.weights(s, first=first, higher=higher, zero=zero, causal=causal)
        n = q.shape[-2]
        visible = np.tril(np.ones((n, n), dtype=bool)) if causal else np.ones((n, n), bool)
        w = np.where(visible, r * self.cosine(q, k), 0.0)  # (*B, N, N)
        rows = []
        for start in range(0, n, 16):
            end = min(start + 16, n) if causal else n
            rows.append(w[..., start:start + 16, :end] @ v[..., :end, :])
        out = np.concatenate(rows, axis=-2) if rows else w[..., :0] @ v
        return out.astype(q.dtype)


class RaisesBidirectional(Explicit):
    """Raises an unexpected exception in every `causal=False` call."""

    name = "raises-bidirectional"

    def attention(self, q, k, v, *, causal=True, **options):
        if not causal:
            raise RuntimeError("kernel launch failed")
        return super().attention(q, k, v, causal=causal, **options)


class CrashesBidirectional(Explicit):
    """Dies of a segmentation fault in every `causal=False` call, as a native kernel might."""

    name = "crashes-bidirectional"

    def attention(self, q, k, v, *, causal=True, **options):
        if not causal:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().attention(q, k, v, causal=causal, **options)


class MisbehavesWhenLong(Explicit):
    """The explicit definition, except on sequences of more than 10^4 tokens."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.name = f"{how}-when-long"

    def attention(self, q, k, v, **options):
        if q.shape[-2] > 10_000:
            if self.how == "hangs":
                time.sleep(3600)
            elif self.how == "allocates":
                np.ones(2**29)  # 4 GiB: more than the tests' cap, less than the machine
            else:
                os.kill(os.getpid(), signal.SIGSEGV)
        return super().attention(q, k, v, **options)


first_order_from_probabilities = FirstOrderFromProbabilities()
global_max = GlobalMax()
quadratic = Explicit()
future_mean = FutureMean()
swapped_gates = SwappedGates()
ignored_gates = IgnoredGates()
wrong_dtype = WrongDtype()
nan_on_zero_vectors = NanOnZeroVectors()
forgetful_state = ForgetfulState()
cumulative_sums = CumulativeSums()
history_state = HistoryState()
spreads_v_nan = SpreadsVNan()
drops_zero_gate = DropsZeroGate()
zero_order_leaks = ZeroOrderLeaks()
uncentred_first_order = UncentredFirstOrder()
bidirectional_counts_t = BidirectionalCountsT()
default_count_i = DefaultCountI()
zero_keys_as_padding = ZeroKeysAsPadding()
masks_with_product = MasksWithProduct()
naive_norms = NaiveNorms()
raises_bidirectional = RaisesBidirectional()
crashes_bidirectional = CrashesBidirectional()
hangs_when_long = MisbehavesWhenLong("hangs")
allocates_when_long = MisbehavesWhenLong("allocates")
crashes_when_long = MisbehavesWhenLong("crashes")
