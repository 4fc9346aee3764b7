"""The O(N) chunked form of ZeroS attention (spec section 4, ZS-ON-*).

The weights are affine in ``(exp(s_i), s_i, 1)`` with coefficients that depend on the query
step only, so attention is linear attention with three stacked key features

    phi(k_i) = [exp(s_i - m) kh_i,  (s_i - sbar) kh_i,  kh_i]        (3D,)

and a (3D, Dv) state. The sequence is cut into chunks of C tokens. Within a chunk the weights
are formed explicitly (C x C); earlier chunks are read from the carried state. Every
exponent is relative to the causal running max, so nothing overflows and no prefix
underflows to 0/0 (ZS-STAB-RANGE); the mean logit is kept relative to the running max
(ZS-STAB-OFFSET).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device

from ._directions import unit
from ._logits import check_default_logits, deviation_logits, running_mean_logits
from ._state import State
from ._validate import Inputs

__all__ = ["PrefixStats", "causal_step", "run"]


class PrefixStats(NamedTuple):
    """Softmax statistics of each query row over the keys it sees (spec 4.2, steps 1-3).

    m : (*B, R) running max m_t; mean_offset : (*B, R) ``sbar_t - m_t`` (as in `State`);
    normaliser : (*B, R) E_t; decay : (*B, R) ``exp(m_prev - m_t)``;
    shift : (*B, R) ``sbar_prev - sbar_t``;
    relative : (*B, R, C) ``s_i - m_t`` where visible, else 0;
    exp_logits : (*B, R, C) ``exp(s_i - m_t)`` where visible, else 0.
    """

    m: Any
    mean_offset: Any
    normaliser: Any
    decay: Any
    shift: Any
    relative: Any
    exp_logits: Any


def prior_count(xp: Any, state: State, dtype: Any) -> Any:
    """n, the tokens `state` holds: its int `length`, or, where a backend carries rows of
    different counts (an integer array (*B,) as `length`), that count as (*B, 1) of `dtype`,
    so that it broadcasts against the (*B, C) positions of a chunk."""
    if isinstance(state.length, int):
        return state.length
    return xp.astype(state.length, dtype)[..., None]


def prefix_stats(xp: Any, state: State, s: Any, visible: Any, t: Any) -> PrefixStats:
    """Statistics of rows whose keys are the state's prefix plus the `visible` chunk keys.

    Shapes: s (*B, C) chunk logits; visible (R, C) bool, every row seeing at least one key;
    t (R,) or (*B, R) 1-based positions. A NaN logit at i reaches the rows that see i and no other.
    """
    # Step 1 (4.2): the running max. An empty state adopts the chunk's first logit as its
    # reference, so no infinity enters the state.
    n = prior_count(xp, state, s.dtype)  # n, or (*B, 1) where rows hold different counts
    if isinstance(n, int):
        m_prev = state.running_max if n else s[..., 0]  # (*B,)
    else:
        m_prev = xp.where(n[..., 0] > 0, state.running_max, s[..., 0])
    seen = xp.where(visible, s[..., None, :], -xp.inf)  # (*B, R, C), -inf where hidden
    m = xp.maximum(m_prev[..., None], xp.max(seen, axis=-1))  # (*B, R)
    # Step 2: logits relative to each row's max, <= 0 where visible (exp(-inf) = 0 elsewhere).
    shifted = seen - m[..., None]  # (*B, R, C)
    exp_logits = xp.exp(shifted)
    relative = xp.where(visible, shifted, 0.0)
    # Step 3: the normaliser E_t, and the mean logit relative to m_t from the prefix count n.
    decay = xp.exp(m_prev[..., None] - m)  # (*B, R), <= 1
    normaliser = decay * state.normaliser[..., None] + xp.sum(exp_logits, axis=-1)
    mean_prev = state.mean_offset[..., None] + (m_prev[..., None] - m)  # sbar_prev - m_t
    mean_offset = (n * mean_prev + xp.sum(relative, axis=-1)) / t  # (*B, R)
    return PrefixStats(m=m, mean_offset=mean_offset, normaliser=normaliser, decay=decay,
                       shift=mean_prev - mean_offset, relative=relative, exp_logits=exp_logits)


def coefficients(gates: tuple[Any, Any, Any], t: Any, normaliser: Any) -> tuple[Any, Any, Any]:
    """Per-row coefficients of ``r = a exp(s_i - m) + b (s_i - sbar) + c`` (spec 4.1).

    ``a = gh / E``, ``b = (g1 - gh) / t``, ``c = (g0 - gh) / t``; all (*B, R).
    """
    first, higher, zero = gates
    return higher / normaliser, (first - higher) / t, (zero - higher) / t


def read(xp: Any, kv: Any, qh: Any, a: Any, b: Any, c: Any) -> Any:
    """``qh_t^T (a_t F + b_t G + c_t H)`` for every row: one (3D -> Dv) product.

    Shapes: kv (*B, 3, D, Dv); qh (*B, R, D); a, b, c (*B, R). Returns (*B, R, Dv).
    """
    features = xp.concat([a[..., None] * qh, b[..., None] * qh, c[..., None] * qh], axis=-1)
    d3, dv = 3 * kv.shape[-2], kv.shape[-1]
    return features @ xp.reshape(kv, (*kv.shape[:-3], d3, dv))  # (*B, R, 3D) @ (*B, 3D, Dv)


def absorb(xp: Any, state: State, st: PrefixStats, k: Any, kh: Any, v: Any,
           count: Any = None) -> State:
    """The state after appending a chunk (spec 4.2, step 6): one (3D x C) @ (C x Dv) product.

    `st` holds statistics of rows of the chunk whose last row sees every key of the chunk
    (the chunk's last query, or a single row that sees the whole chunk), or every key it
    absorbs (the others zero keys and values, `count` (*B,) of them real).
    Shapes: k, kh (*B, C, D); v (*B, C, Dv).
    """
    m, mean_offset = st.m[..., -1], st.mean_offset[..., -1]  # (*B,)
    w = st.exp_logits[..., -1, :]  # (*B, C) exp(s_i - m)
    f = st.relative[..., -1, :] - mean_offset[..., None]  # (*B, C) s_i - sbar
    features = xp.concat([w[..., None] * kh, f[..., None] * kh, kh], axis=-1)  # (*B, C, 3D)
    update = xp.matrix_transpose(features) @ v  # (*B, 3D, Dv)
    old_f, old_g, old_h = (state.kv[..., j, :, :] for j in (State.F, State.G, State.H))
    decay, shift = st.decay[..., -1, None, None], st.shift[..., -1, None, None]
    kv = xp.stack([decay * old_f, old_g + shift * old_h, old_h], axis=-3)  # slots F, G, H
    kv = kv + xp.reshape(update, kv.shape)
    added = k.shape[-2] if count is None else count
    return State(length=state.length + added, running_max=m, mean_offset=mean_offset,
                 normaliser=st.normaliser[..., -1], kv=kv,
                 key_sum=state.key_sum + xp.sum(k, axis=-2))


def read_whole(xp: Any, state: State, q: Any, gates: tuple[Any, Any, Any]) -> Any:
    """Bidirectional outputs of queries q (*B, R, D) that see every token `state` holds
    (spec 4.3: t = n), with gates (*B, R) each. Returns (*B, R, Dv)."""
    coef = coefficients(gates, float(state.length), state.normaliser[..., None])
    return read(xp, state.kv, unit(xp, q), *coef)


def append(xp: Any, state: State, k: Any, v: Any, s: Any) -> State:
    """The state after a chunk whose outputs are not wanted (spec 4.3): its statistics are
    those of one row that sees the whole chunk. Shapes: k (*B, C, D); v (*B, C, Dv); s (*B, C).
    """
    c = s.shape[-1]
    everything = xp.ones((1, c), dtype=xp.bool, device=device(s))
    t = xp.asarray([float(state.length + c)], dtype=s.dtype, device=device(s))
    return absorb(xp, state, prefix_stats(xp, state, s, everything, t), k, unit(xp, k), v)


def causal_step(
    xp: Any, state: State, q: Any, k: Any, v: Any, s: Any, gates: tuple[Any, Any, Any], *,
    lengths: Any = None,
) -> tuple[Any, State]:
    """Causal outputs of one chunk and the state after it (spec 4.2, steps 1-6).

    Shapes: q, k ``(*B, C, D)``; v ``(*B, C, Dv)``; s and each gate ``(*B, C)``. Returns the
    ``(*B, C, Dv)`` outputs and the state of the prefix extended by the chunk.

    With `lengths`, an integer array (*B,) of values in 1..C, row b holds only its first
    lengths[b] tokens and the rest is padding: zero keys and values, finite queries, logits
    and gates. The real tokens' outputs are those without the padding (no token sees one
    after it), and the state is the state after each row's own last token (its `length` an
    array of per-row counts).
    """
    c = s.shape[-1]
    t = prior_count(xp, state, s.dtype) + xp.arange(1, c + 1, dtype=s.dtype, device=device(s))
    rows = xp.arange(c, device=device(s))
    visible = rows[None, :] <= rows[:, None]  # (C, C): key i is visible from query t if i <= t
    qh, kh = unit(xp, q), unit(xp, k)
    st = prefix_stats(xp, state, s, visible, t)
    out = causal_chunk(xp, state, st, qh, kh, v, gates, visible, t)
    if lengths is None:
        return out, absorb(xp, state, st, k, kh, v)
    last = rows == (lengths - 1)[..., None]  # (*B, C): each row's last real token

    def at_last(x: Any, per_key: bool) -> Any:  # the statistics of that row, kept as row -1
        pick = last[..., None] if per_key else last
        return xp.sum(xp.where(pick, x, 0.0), axis=-2 if per_key else -1, keepdims=True)

    stats = PrefixStats(*(at_last(x, name in ("relative", "exp_logits"))
                          for name, x in st._asdict().items()))
    return out, absorb(xp, state, stats, k, kh, v, count=lengths)


def causal_chunk(
    xp: Any,
    state: State,
    st: PrefixStats,
    qh: Any,
    kh: Any,
    v: Any,
    gates: tuple[Any, Any, Any],
    visible: Any,
    t: Any,
) -> Any:
    """Causal outputs of one chunk given the state before it and its rows' statistics
    (spec 4.2, steps 4-6).

    Shapes: qh, kh (*B, C, D) unit vectors; v (*B, C, Dv); each gate (*B, C); visible (C, C);
    t (C,). Returns (*B, C, Dv).
    """
    a, b, c0 = coefficients(gates, t, st.normaliser)
    # Step 4: the chunk's own keys, weights r[t, i] * cos[t, i] formed explicitly.
    r = a[..., None] * st.exp_logits + b[..., None] * (st.relative - st.mean_offset[..., None])
    r = r + c0[..., None]  # (*B, C, C)
    cos = qh @ xp.matrix_transpose(kh)  # (*B, C, C)
    w = xp.where(visible, r * cos, 0.0)
    # Step 5: earlier chunks through the state, coefficients moved to this row's frame.
    inter = read(xp, state.kv, qh, a * st.decay, b, b * st.shift + c0)
    return inter + _apply(xp, w, v, visible)


def _apply(xp: Any, w: Any, v: Any, visible: Any) -> Any:
    """``w @ v``, where a non-finite v_i must reach rows t >= i only (ZS-ERR-NONFINITE).

    A matrix product would spread it to earlier rows through 0 * inf = NaN, so chunks holding
    one use the explicit masked sum instead.
    """
    if bool(xp.all(xp.isfinite(v))):
        return w @ v  # (*B, C, C) @ (*B, C, Dv)
    terms = w[..., None] * v[..., None, :, :]  # (*B, C, C, Dv)
    return xp.sum(xp.where(visible[..., None], terms, 0.0), axis=-2)


def run(xp: Any, inp: Inputs, state: State, *, causal: bool, chunk_size: int) -> tuple:
    """Attention over the whole input, chunk by chunk. Returns ``(output, state)``.

    Causal: each chunk reads the state of the chunks before it, then is absorbed into it.
    Non-causal: all chunks are absorbed first, then every query reads the final state with
    t = N (spec 4.3).
    """
    n = inp.n
    spans = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    if not causal and inp.logits is None:
        whole = deviation_logits(inp.k, causal=False)  # (*B, N), ZS-LOG-DEFAULT
        check_default_logits(xp, whole, inp.k)

    def logits(start: int, end: int, st: State) -> Any:  # (*B, C)
        if inp.logits is not None:
            return inp.logits[..., start:end]
        if causal:
            k = inp.k[..., start:end, :]
            s = running_mean_logits(xp, k, st.key_sum, 1.0 + st.length)
            check_default_logits(xp, s, k, st.key_sum)
            return s
        return whole[..., start:end]

    def gates(start: int, end: int) -> tuple[Any, Any, Any]:
        return inp.first[..., start:end], inp.higher[..., start:end], inp.zero[..., start:end]

    outputs = []
    for start, end in spans:
        k, v = inp.k[..., start:end, :], inp.v[..., start:end, :]
        s = logits(start, end, state)
        if causal:
            out, state = causal_step(xp, state, inp.q[..., start:end, :], k, v, s,
                                     gates(start, end))
            outputs.append(out)
        else:
            state = append(xp, state, k, v, s)
    if not causal:
        for start, end in spans:
            outputs.append(read_whole(xp, state, inp.q[..., start:end, :], gates(start, end)))
    if not outputs:
        dv = inp.v.shape[-1]
        return xp.zeros((*inp.batch, 0, dv), dtype=inp.v.dtype, device=device(inp.v)), state
    return xp.concat(outputs, axis=-2), state
