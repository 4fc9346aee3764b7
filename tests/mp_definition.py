"""An independent arbitrary-precision evaluation of the ZeroS definition (spec sections 2, 13).

Written directly from the formulas of spec sections 2 and 3 (ZS-LOG-DEFAULT) with plain Python
loops over mpmath numbers (``mp.dps = 50``), so it shares no code with `zeros_ref`, which it
must never import, nor its O(N) algorithm: every weight r[t,i] below is formed and summed
explicitly. NumPy is used only to walk the leading axes and to carry inputs in and results
out; every input float is converted to mpmath exactly.

Three things keep it fast enough for the golden cases (N = 200 in about a second) without
changing a formula: the sums over P(t) are running sums (P(t) is a prefix of the sequence);
p, z, f and h, which depend on t only through P(t), are computed once per visible set; and
the cosines are exact integer dot products (`_integers`).

For query t and visible key i in P(t), with n = |P(t)|:

    p[t,i] = exp(s_i) / sum_{j in P(t)} exp(s_j)
    z[t,i] = 1 / n
    f[t,i] = (s_i - sbar_t) / n,    sbar_t = mean of s over P(t)
    h[t,i] = p[t,i] - z[t,i] - f[t,i]
    r[t,i] = g1_t f[t,i] + gh_t h[t,i] + g0_t z[t,i]
    out_t  = sum_{i in P(t)} r[t,i] <qh_t, kh_i> v_i

with xh = x / |x| and the direction of a zero vector equal to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpmath import mp

__all__ = ["DPS", "attention", "deviation_logits", "layer", "weights"]

DPS = 50
"""Decimal digits of the evaluation."""

Vector = list[Any]  # a list of mpmath numbers


def _mpf(x: Any) -> Any:
    return mp.mpf(float(x))  # exact: every float64 is an mpf


def _vectors(rows: np.ndarray) -> list[Vector]:
    return [[_mpf(x) for x in row] for row in rows]


def _visible(t: int, n: int, causal: bool) -> range:
    """P(t) as 0-based indices: the prefix up to t (causal) or the whole sequence."""
    return range(t + 1) if causal else range(n)


def _integers(x: Vector) -> tuple[list[int], Any]:
    """x as integers a with x = 2^e a (one e for the vector), and 1 / |a| (0 when x = 0).

    Every finite mpf is an integer times a power of two, so this is exact, and a has the
    direction of x: cos = <a_q, a_k> / (|a_q| |a_k|), with the dot product exact in integers.
    """
    if not all(mp.isfinite(c) for c in x):
        raise ValueError("the definition is evaluated for finite q and k only")
    parts = [(-1 if c < 0 else 1, *c.man_exp) for c in x]  # c = sign * man * 2^exp, man >= 0
    e = min((exp for _, man, exp in parts if man), default=0)
    a = [sign * (man << (exp - e)) for sign, man, exp in parts]
    square = sum(c * c for c in a)
    return a, (1 / mp.sqrt(square) if square else mp.zero)


def _cosine(q: tuple[list[int], Any], k: tuple[list[int], Any]) -> Any:
    """<qh, kh> of two vectors given by `_integers`; the direction of a zero vector is 0."""
    (a, inverse_a), (b, inverse_b) = q, k
    return mp.mpf(sum(x * y for x, y in zip(a, b, strict=True))) * inverse_a * inverse_b


def _dot(a: Vector, b: Vector) -> Any:
    return mp.fsum(x * y for x, y in zip(a, b, strict=True))


def _running_sums(x: Vector, causal: bool) -> Vector:
    """sum_{j in P(t)} x_j for every t.

    P(t) is the prefix range(|P(t)|) of the sequence, so each sum is the previous one plus the
    x_j that P(t) holds beyond P(t - 1): one new term per step (causal), or all of them at
    t = 0 and none after (bidirectional).
    """
    n = len(x)
    sums, total, added = [], mp.zero, 0
    for t in range(n):
        count = len(_visible(t, n, causal))
        total += mp.fsum(x[added:count])
        added = count
        sums.append(total)
    return sums


def deviation_logits_sequence(
    u: list[Vector], *, mu: Vector, tau: Any, causal: bool
) -> Vector:
    """s_i = -<u_i, ubar_i> / sqrt(D), ubar_i = (tau mu + sum_{j in P(i)} u_j) / (tau + |P(i)|)."""
    n, d = len(u), len(mu)
    sums = [_running_sums([row[c] for row in u], causal) for c in range(d)]  # [c][i]
    s = []
    for i in range(n):
        count = tau + len(_visible(i, n, causal))
        ubar = [(tau * mu[c] + sums[c][i]) / count for c in range(d)]
        s.append(-_dot(u[i], ubar) / mp.sqrt(d))
    return s


def _terms(s: Vector, exp_s: Vector, exp_sum: Any, s_sum: Any, count: int) -> list[Vector]:
    """[f, h, z] of every key i in a visible set P of `count` keys, range(count).

    exp_sum and s_sum are the sums of exp(s_j) and of s_j over P.
    """
    z = mp.one / count
    sbar = s_sum / count
    terms = []
    for i in range(count):
        p = exp_s[i] / exp_sum
        f = (s[i] - sbar) / count
        terms.append([f, p - z - f, z])
    return terms


def weights_sequence(
    s: Vector, g1: Vector, gh: Vector, g0: Vector, *, causal: bool
) -> list[Vector]:
    """The N x N matrix r of one sequence (zero outside P(t)).

    p, z, f and h depend on t only through P(t), so they are computed once per visible set
    (once in all for the bidirectional form), and the sums over P(t) are running sums.
    """
    n = len(s)
    exp_s = [mp.exp(x) for x in s]
    exp_sums = _running_sums(exp_s, causal)  # sum_{j in P(t)} exp(s_j)
    s_sums = _running_sums(s, causal)  # sum_{j in P(t)} s_j
    r = [[mp.zero] * n for _ in range(n)]
    terms: dict[int, list[Vector]] = {}
    for t in range(n):
        count = len(_visible(t, n, causal))
        if count not in terms:
            terms[count] = _terms(s, exp_s, exp_sums[t], s_sums[t], count)
        for i, (f, h, z) in enumerate(terms[count]):
            r[t][i] = g1[t] * f + gh[t] * h + g0[t] * z
    return r


def attention_sequence(
    q: list[Vector],
    k: list[Vector],
    v: list[Vector],
    s: Vector,
    g1: Vector,
    gh: Vector,
    g0: Vector,
    *,
    causal: bool,
) -> list[Vector]:
    """out_t = sum_{i in P(t)} r[t,i] cos[t,i] v_i for one sequence."""
    n = len(q)
    dv = len(v[0]) if n else 0
    qa = [_integers(x) for x in q]
    ka = [_integers(x) for x in k]
    columns = [[row[j] for row in v] for j in range(dv)]  # v[:, j]
    r = weights_sequence(s, g1, gh, g0, causal=causal)
    out = []
    for t in range(n):
        seen = _visible(t, n, causal)  # range(|P(t)|)
        w = [r[t][i] * _cosine(qa[t], ka[i]) for i in seen]  # r[t,i] cos[t,i]
        out.append([mp.fdot(w, column[:len(seen)]) for column in columns])
    return out


# -- NumPy front ends: broadcast leading axes, convert exactly, round the result once. ----------


def _gate(g: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(g, dtype=np.float64), shape)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    logits: np.ndarray | None = None,
    first: Any = 1.0,
    higher: Any = 1.0,
    zero: Any = 0.0,
    causal: bool = True,
) -> np.ndarray:
    """The definition for float64 numpy inputs (*B, N, D), (*B, N, Dv), logits (*B, N).

    ``logits=None`` means the default of ZS-LOG-DEFAULT: the deviation logits of the raw k with
    mu = 0 and tau = 1. Returns the (*B, N, Dv) output rounded to float64.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n, d, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    shapes = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    shapes += [np.shape(g)[:-1] for g in (first, higher, zero) if np.ndim(g)]
    if logits is not None:
        shapes.append(np.shape(logits)[:-1])
    batch = np.broadcast_shapes(*shapes)
    q = np.broadcast_to(q, (*batch, n, d))
    k = np.broadcast_to(k, (*batch, n, d))
    v = np.broadcast_to(v, (*batch, n, dv))
    s_all = None if logits is None else _gate(logits, (*batch, n))
    gates = [_gate(g, (*batch, n)) for g in (first, higher, zero)]
    out = np.empty((*batch, n, dv))
    with mp.workdps(DPS):
        for index in np.ndindex(*batch):
            kk = _vectors(k[index])
            if s_all is None:
                s = deviation_logits_sequence(kk, mu=[mp.zero] * d, tau=mp.one, causal=causal)
            else:
                s = [_mpf(x) for x in s_all[index]]
                if n and not all(mp.isfinite(x) for x in s):
                    raise ValueError("the definition is evaluated for finite logits only")
            g1, gh, g0 = ([_mpf(x) for x in g[index]] for g in gates)
            rows = attention_sequence(
                _vectors(q[index]), kk, _vectors(v[index]), s, g1, gh, g0, causal=causal
            )
            for t, row in enumerate(rows):
                out[(*index, t)] = [float(x) for x in row]
    return out


def weights(
    logits: np.ndarray,
    *,
    first: Any = 1.0,
    higher: Any = 1.0,
    zero: Any = 0.0,
    causal: bool = True,
) -> np.ndarray:
    """The (*B, N, N) weight matrix r for float64 logits (*B, N), rounded to float64."""
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[-1]
    shapes = [logits.shape[:-1]] + [np.shape(g)[:-1] for g in (first, higher, zero) if np.ndim(g)]
    batch = np.broadcast_shapes(*shapes)
    s_all = np.broadcast_to(logits, (*batch, n))
    gates = [_gate(g, (*batch, n)) for g in (first, higher, zero)]
    out = np.empty((*batch, n, n))
    with mp.workdps(DPS):
        for index in np.ndindex(*batch):
            s = [_mpf(x) for x in s_all[index]]
            g1, gh, g0 = ([_mpf(x) for x in g[index]] for g in gates)
            r = weights_sequence(s, g1, gh, g0, causal=causal)
            out[index] = [[float(x) for x in row] for row in r]
    return out


def deviation_logits(
    u: np.ndarray, *, mu: Any = 0.0, tau: float = 1.0, causal: bool = True
) -> np.ndarray:
    """Deviation logits of float64 u (*B, N, D), prior mean mu (scalar or (*B, D)), as float64."""
    u = np.asarray(u, dtype=np.float64)
    n, d = u.shape[-2], u.shape[-1]
    mu = np.asarray(mu, dtype=np.float64)
    mu_full = mu * np.ones(d) if mu.ndim == 0 else mu
    batch = np.broadcast_shapes(u.shape[:-2], mu_full.shape[:-1])
    u = np.broadcast_to(u, (*batch, n, d))
    mu_full = np.broadcast_to(mu_full, (*batch, d))
    out = np.empty((*batch, n))
    with mp.workdps(DPS):
        for index in np.ndindex(*batch):
            s = deviation_logits_sequence(
                _vectors(u[index]),
                mu=[_mpf(x) for x in mu_full[index]],
                tau=_mpf(tau),
                causal=causal,
            )
            out[index] = [float(x) for x in s]
    return out


# -- The layer (spec section 13) -----------------------------------------------------------------


def _linear(row: Vector, w: list[Vector], b: Vector) -> Vector:
    """row @ w + b, with w given as rows of the (in, out) matrix."""
    return [mp.fsum(row[i] * w[i][j] for i in range(len(row))) + b[j] for j in range(len(b))]


def _rotate(x: Vector, position: int, pairing: str | None) -> Vector:
    """RoPE of one head vector at `position`: pair j turns by position * 10000^(-2j/d)."""
    if pairing is None:
        return list(x)
    d, out = len(x), list(x)
    for j in range(d // 2):
        angle = position * mp.power(10000, -mp.mpf(2 * j) / d)
        a, b = (j, j + d // 2) if pairing == "half" else (2 * j, 2 * j + 1)
        out[a] = x[a] * mp.cos(angle) - x[b] * mp.sin(angle)
        out[b] = x[a] * mp.sin(angle) + x[b] * mp.cos(angle)
    return out


def _layer_norm(x: Vector) -> Vector:
    mean = mp.fsum(x) / len(x)
    var = mp.fsum((c - mean) ** 2 for c in x) / len(x)
    return [(c - mean) / mp.sqrt(var + _mpf(1e-5)) for c in x]


def layer_sequence(x: list[Vector], p: dict[str, Any], *, heads: int, causal: bool,
                   first_layer: bool, rope: str | None, norm: bool) -> list[Vector]:
    """The layer of spec table 13.1 for one sequence x (N rows of Dm), params as mp lists."""
    n, dm = len(x), len(x[0])
    d = dm // heads
    proj = {c: [_linear(row, p[f"w{c}"], p[f"b{c}"]) for row in x] for c in "qkvug"}
    merged: list[Vector] = [[] for _ in range(n)]
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        q, k, v, u = ([row[cols] for row in proj[c]] for c in "qkvu")
        gate = [row[3 * h:3 * h + 3] for row in proj["g"]]
        g1 = [1 / (1 + mp.exp(-g[0])) for g in gate]
        gh = [1 / (1 + mp.exp(-g[1])) for g in gate]
        g0 = [mp.tanh(g[2]) if first_layer else mp.zero for g in gate]
        s = deviation_logits_sequence(u, mu=p["mu"][h], tau=mp.exp(p["log_tau"][h]),
                                      causal=causal)
        q = [_rotate(row, t, rope) for t, row in enumerate(q)]
        k = [_rotate(row, t, rope) for t, row in enumerate(k)]
        out = attention_sequence(q, k, v, s, g1, gh, g0, causal=causal)
        for t in range(n):
            merged[t] += _layer_norm(out[t]) if norm else out[t]
    return [_linear(row, p["wo"], p["bo"]) for row in merged]


def layer(x: np.ndarray, params: dict[str, np.ndarray], *, heads: int, causal: bool = True,
          first_layer: bool = False, rope: str | None = "half", norm: bool = True) -> np.ndarray:
    """The layer for float64 numpy x (*B, N, Dm) and parameters, rounded to float64."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape)
    with mp.workdps(DPS):
        p = {}
        for name, value in params.items():
            value = np.asarray(value, dtype=np.float64)
            p[name] = (_vectors(value) if value.ndim == 2 else [_mpf(c) for c in value])
        for index in np.ndindex(*x.shape[:-2]):
            rows = layer_sequence(_vectors(x[index]), p, heads=heads, causal=causal,
                                  first_layer=first_layer, rope=rope, norm=norm)
            out[index] = [[float(c) for c in row] for row in rows]
    return out
