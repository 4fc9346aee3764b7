"""One slab of chunks of the array-API form: spec 4.2 steps 2-6 for S consecutive chunks at
once, given what the sequences carried into the slab (the torch form's `slab`, in array-API
calls).

The slab's q, k and v arrive as the caller gave them: their directions, screening and layout
are computed here, slab by slab, where they stay in cache (XLA's whole-array passes over them
cost several times more), and so are the rows that non-finite inputs reach.

Shapes: S chunks of a slab, R rows, C tokens a chunk, D and Dv; per-row fields are laid out
chunk first, (S, R, C), so that a slab is a slice of the leading axis of the whole call's
(nc, R, C) arrays. Frames are those of `chunked` (its docstring): F and E relative to M_c,
the running max at the end of chunk c; G' about s_ref; H plain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .screen import Exact, direction, finite

__all__ = ["Carry", "Marks", "Slab", "Sums", "links", "step", "vectors"]


class Sums(NamedTuple):
    """The sums of spec 4.1 carried between chunks: F (R, D, Dv) and E (R,) in the frame of
    the last chunk absorbed, G' (R, D, Dv) about s_ref, H (R, D, Dv). With an axis S in
    front, the sums after (or before) each chunk of a slab."""

    f: Any
    e: Any
    g: Any
    h: Any


class Carry(NamedTuple):
    """What a slab hands the next: the sums after its last chunk, and `spoilt` (R,) bool,
    whether the sequence of that chunk has met a non-finite key, value or logit."""

    sums: Sums
    spoilt: Any


class Slab(NamedTuple):
    """What the chunk step reads for S consecutive chunks (by field name).

    Per row, (S, R, C, D or Dv): ``q``, ``k``, ``v`` as given (padding slots hold anything).
    Per row, (S, R, C): ``s`` logits (finite), ``rel`` s - s_ref, ``w`` exp(s - M_c),
    ``m_row`` m_t, ``decay`` exp(M_{c-1} - m_t), ``mean`` sbar_t - s_ref, the gates
    ``first``, ``higher``, ``zero`` (finite); ``bad_row`` a gate of the row was not finite,
    ``bad_logit`` its logit was not (which spoils later rows, like a key). Per row, (S, R):
    ``m_prev`` M_{c-1}, ``m_end`` M_c, ``s_ref``. Per chunk: ``valid`` (S, C) the slot holds
    a token, ``t`` (S, C) the tokens seen up to each slot, ``start`` (S,) the chunk starts
    its sequence, ``segment`` (S,) its sequence. Padding slots have s = rel = w = 0.
    """

    q: Any
    k: Any
    v: Any
    s: Any
    rel: Any
    w: Any
    m_row: Any
    decay: Any
    mean: Any
    first: Any
    higher: Any
    zero: Any
    bad_row: Any
    bad_logit: Any
    m_prev: Any
    m_end: Any
    s_ref: Any
    valid: Any
    t: Any
    start: Any
    segment: Any


class Marks(NamedTuple):
    """What a slab reports of each chunk besides its outputs: ``keys`` (S, R, D) the sum of
    its keys (for the states' key sums), ``spoilt`` (S, R) whether its sequence has met a
    non-finite key, value or logit by its end, ``nonfinite_key`` (S, R) whether one of its
    keys held a non-finite value."""

    keys: Any
    spoilt: Any
    nonfinite_key: Any


class Vectors(NamedTuple):
    """A slab's vectors as the step uses them: ``q`` unit directions (S, R, C, D), ``k`` key
    directions transposed (S, R, D, C) (the updates K^T V and the cosines Q K^T are then
    products of row-major matrices, which XLA's CPU code multiplies much faster), ``v``
    finite values (S, R, C, Dv), zero in padding slots and times 2^power; ``raw_k`` the keys
    as given, zero in padding slots (S, R, C, D); ``bad_query`` (S, R, C) the rows whose
    query or gate is not finite, ``bad_key`` those whose key, value or logit is not,
    ``nonfinite_key`` those whose key is not."""

    q: Any
    k: Any
    v: Any
    raw_k: Any
    bad_query: Any
    bad_key: Any
    nonfinite_key: Any


def vectors(xp: Any, x: Slab, exact: Exact | None, power: Any, *, queries: bool) -> Vectors:
    """Directions, screening (`screen`) and layout of a slab's q, k and v; `power` (R,) the
    power of two of each row's values (`Exact.lift`), or None. Without `queries` (no outputs
    are read), ``q`` and ``bad_query`` are None."""
    valid = x.valid[:, None, :]  # (S, 1, C)
    raw_k = xp.where(valid[..., None], x.k, 0.0)
    keys = xp.matrix_transpose(raw_k)  # (S, R, D, C)
    directions = (lambda y, axis: direction(xp, y, axis=axis)) if exact is None \
        else exact.directions
    kh, bad_k = directions(keys, -2)
    qh, bad_q = directions(x.q, -1) if queries else (None, None)
    v, bad_v = finite(xp, x.v)
    v = xp.where(valid[..., None], v, 0.0)
    if power is not None:
        v = exact.raised(v, power[None, :, None, None])
    bad_key = (bad_k | xp.any(bad_v, axis=-1) | x.bad_logit) & valid
    bad_query = None if bad_q is None else (bad_q | x.bad_row) & valid
    return Vectors(q=qh, k=kh, v=v, raw_k=raw_k, bad_query=bad_query,
                   bad_key=bad_key, nonfinite_key=bad_k & valid)


def links(xp: Any, start: Any) -> tuple[Any, Any]:
    """How the S chunks of a slab feed each other, from `start` (S,) bool: `lower` (S, S),
    chunk j < c of the same sequence feeds chunk c; `entering` (S,), chunk c continues the
    sequence of the chunk before the slab."""
    opened = xp.cumulative_sum(xp.astype(start, xp.int32))  # the sequence, counted in the slab
    index = xp.arange(start.shape[0])
    lower = (index[None, :] < index[:, None]) & (opened[None, :] == opened[:, None])
    return lower, opened == 0


def _mix(xp: Any, weights: Any, u: Any) -> Any:
    """``sum_j weights[c, j, r] u[j, r, ...]`` for weights (S, S, R) and u (S, R, ...): one
    batch of R matrix products."""
    count, rows = u.shape[0], u.shape[1]
    flat = xp.permute_dims(xp.reshape(u, (count, rows, -1)), (1, 0, 2))  # (R, S, X)
    mixed = xp.permute_dims(weights, (2, 0, 1)) @ flat  # (R, S, X)
    return xp.reshape(xp.permute_dims(mixed, (1, 0, 2)), u.shape)


def step(xp: Any, carry: Carry, x: Slab, init: Sums | None, *, outputs: bool,
         exact: Exact | None = None, power: Any = None) -> tuple[Carry, Any, Sums, Marks]:
    """The sums before and after each chunk of a slab, and (with `outputs`) its outputs.

    Step 6 for every chunk: U_c = K_c^T [w v, (s - s_ref) v, v]. Chunk c reads the sums of
    the chunks before it in its sequence, ``sum_j exp(M_j - M_{c-1}) U_j`` for F and E (a
    decay matrix whose exponents are all <= 0) and plain sums for G' and H, plus the sums its
    sequence entered the slab with (`carry`, in the frame ``m_prev[0]``, or its initial sums
    `init` (S', R, ...) taken by ``segment`` where it starts in the slab; None for zeros),
    moved to M_{c-1}. A non-finite key, value or logit reaches the later rows of its
    sequence, across slabs by the carry's `spoilt`: their outputs are NaN, as are those of
    rows whose query or gate is not finite. `exact` and `power` as in `vectors`; outputs are
    returned times 2^-power.

    Returns the next carry, the outputs (S, R, C, Dv) (None without `outputs`), the sums
    after each chunk (S, R, ...) and the slab's `Marks`.
    """
    vec = vectors(xp, x, exact, power, queries=outputs)
    lower, entering = links(xp, x.start)
    update = Sums(f=vec.k @ (x.w[..., None] * vec.v), e=xp.sum(x.w, axis=-1),
                  g=vec.k @ (x.rel[..., None] * vec.v), h=vec.k @ vec.v)
    gaps = x.m_end[None, :, :] - x.m_prev[:, None, :]  # (S, S, R): M_j - M_{c-1}
    decays = xp.exp(xp.where(lower[..., None], gaps, -xp.inf))
    flat = xp.astype(lower, x.w.dtype)  # (S, S)
    moved = xp.exp(xp.where(entering[:, None], x.m_prev[:1, :], x.s_ref) - x.m_prev)  # (S, R)

    def entry(carried: Any, initial: Any) -> Any:  # what each chunk's sequence entered with
        ent = xp.reshape(entering, (-1, *([1] * carried.ndim)))
        if initial is None:
            return xp.where(ent, carried[None, ...], 0.0)
        return xp.where(ent, carried[None, ...], xp.take(initial, x.segment, axis=0))

    start = Sums(*(entry(c, None if init is None else i)
                   for c, i in zip(carry.sums, init or (None,) * 4, strict=True)))
    scale = moved[..., None, None]
    before = Sums(f=_mix(xp, decays, update.f) + scale * start.f,
                  e=xp.sum(decays * update.e[None, :, :], axis=1) + moved * start.e,
                  g=xp.reshape(flat @ xp.reshape(update.g, (flat.shape[0], -1)),
                               update.g.shape) + start.g,
                  h=xp.reshape(flat @ xp.reshape(update.h, (flat.shape[0], -1)),
                               update.h.shape) + start.h)
    hop = xp.exp(x.m_prev - x.m_end)  # (S, R): M_{c-1} to M_c
    after = Sums(f=hop[..., None, None] * before.f + update.f, e=hop * before.e + update.e,
                 g=before.g + update.g, h=before.h + update.h)
    # Non-finite keys: within the chunk up to each row, in the chunks before (same sequence).
    within = xp.cumulative_sum(xp.astype(vec.bad_key, xp.int32), axis=-1) > 0  # (S, R, C)
    met = within[..., -1]  # (S, R)
    earlier = (flat @ xp.astype(met, flat.dtype) > 0) | (entering[:, None] & carry.spoilt)
    spoilt = earlier | met
    out = None
    if outputs:
        out = _outputs(xp, x, vec, before)
        reached = vec.bad_query | within | earlier[..., None]
        out = xp.where(reached[..., None], xp.nan, out)
        if power is not None:
            out = exact.lowered(out, power[None, :, None, None], exact=False)
    marks = Marks(keys=xp.sum(vec.raw_k, axis=-2), spoilt=spoilt,
                  nonfinite_key=xp.any(vec.nonfinite_key, axis=-1))
    return Carry(Sums(*(a[-1, ...] for a in after)), spoilt[-1, ...]), out, after, marks


def _outputs(xp: Any, x: Slab, vec: Vectors, before: Sums) -> Any:
    """Steps 2-5 for the S chunks of a slab: outputs (S, R, C, Dv).

    W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (s_i - s_ref) + c_t) for i <= t, with
    a_t = gh_t / E_t, b_t = (g1_t - gh_t) / t, c_t = (g0_t - gh_t) / t - b_t (sbar_t - s_ref);
    the chunks before add ``a_t decay_t qh_t F + b_t qh_t G' + c_t qh_t H``.
    """
    chunk = x.s.shape[-1]
    index = xp.arange(chunk)
    seen = index[None, :] <= index[:, None]  # (C, C): key i is visible from query t
    exponent = xp.where(seen, x.s[..., None, :] - x.m_row[..., None], -xp.inf)
    e = xp.exp(exponent)  # (S, R, C, C), exp(s_i - m_t) <= 1 where seen
    a = x.higher / (x.decay * before.e[..., None] + xp.sum(e, axis=-1))  # gh / E_t
    t = x.t[:, None, :]  # (S, 1, C)
    b = (x.first - x.higher) / t
    c = (x.zero - x.higher) / t - b * x.mean
    cos = xp.where(seen, vec.q @ vec.k, 0.0)
    weights = (a[..., None] * e + b[..., None] * x.rel[..., None, :] + c[..., None]) * cos
    return (weights @ vec.v + ((a * x.decay)[..., None] * vec.q) @ before.f
            + (b[..., None] * vec.q) @ before.g + (c[..., None] * vec.q) @ before.h)
