"""One slab of chunks of the array-API form: spec 4.2 steps 2-6 for S consecutive chunks at
once, given the sums carried into the slab (the torch form's `slab`, in array-API calls).

Shapes: S chunks of a slab, R rows, C tokens a chunk, D and Dv; per-row fields are laid out
chunk first, (S, R, C), so that a slab is a slice of the leading axis of the whole call's
(nc, R, C) arrays. Frames are those of `chunked` (its docstring): F and E relative to M_c,
the running max at the end of chunk c; G' about s_ref; H plain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Slab", "Sums", "links", "step"]


class Sums(NamedTuple):
    """The sums of spec 4.1 carried between chunks: F (R, D, Dv) and E (R,) in the frame of
    the last chunk absorbed, G' (R, D, Dv) about s_ref, H (R, D, Dv). With an axis S in
    front, the sums after (or before) each chunk of a slab."""

    f: Any
    e: Any
    g: Any
    h: Any


class Slab(NamedTuple):
    """What the chunk step reads for S consecutive chunks (by field name).

    Per row, (S, R, C): ``q``, ``k`` unit directions and ``v`` finite values (with a trailing
    D or Dv); ``s`` logits, ``rel`` s - s_ref, ``w`` exp(s - M_c), ``m_row`` m_t, ``decay``
    exp(M_{c-1} - m_t), ``mean`` sbar_t - s_ref, the gates ``first``, ``higher``, ``zero``.
    Per row, (S, R): ``m_prev`` M_{c-1}, ``m_end`` M_c, ``s_ref``. Per chunk: ``t`` (S, C)
    the tokens seen up to each slot, ``start`` (S,) the chunk starts its sequence,
    ``segment`` (S,) its sequence. Padding slots have s = rel = w = 0 and zero vectors.
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
    m_prev: Any
    m_end: Any
    s_ref: Any
    t: Any
    start: Any
    segment: Any


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


def step(xp: Any, carry: Sums, x: Slab, init: Sums | None, *,
         outputs: bool) -> tuple[Sums, Any, Sums]:
    """The sums before and after each chunk of a slab, and (with `outputs`) its outputs.

    Step 6 for every chunk: U_c = K_c^T [w v, (s - s_ref) v, v]. Chunk c reads the sums of
    the chunks before it in its sequence, ``sum_j exp(M_j - M_{c-1}) U_j`` for F and E (a
    decay matrix whose exponents are all <= 0) and plain sums for G' and H, plus the sums its
    sequence entered the slab with (`carry`, in the frame ``m_prev[0]``, or its initial sums
    `init` (S', R, ...) taken by ``segment`` where it starts in the slab; None for zeros),
    moved to M_{c-1}.

    Returns the sums after the last chunk (the next carry), the outputs (S, R, C, Dv) (None
    without `outputs`) and the sums after each chunk (S, R, ...).
    """
    lower, entering = links(xp, x.start)
    keys = xp.matrix_transpose(x.k)  # (S, R, D, C)
    dv = x.v.shape[-1]
    values = xp.concat([x.w[..., None] * x.v, x.rel[..., None] * x.v, x.v], axis=-1)
    product = keys @ values  # (S, R, D, 3 Dv): the three updates in one product
    update = Sums(f=product[..., :dv], e=xp.sum(x.w, axis=-1), g=product[..., dv:2 * dv],
                  h=product[..., 2 * dv:])
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
                   for c, i in zip(carry, init or (None,) * 4, strict=True)))
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
    out = _outputs(xp, x, keys, before) if outputs else None
    return Sums(*(a[-1, ...] for a in after)), out, after


def _outputs(xp: Any, x: Slab, keys: Any, before: Sums) -> Any:
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
    cos = xp.where(seen, x.q @ keys, 0.0)
    weights = (a[..., None] * e + b[..., None] * x.rel[..., None, :] + c[..., None]) * cos
    queries = xp.concat([(a * x.decay)[..., None] * x.q, b[..., None] * x.q,
                         c[..., None] * x.q], axis=-1)  # (S, R, C, 3 D)
    sums = xp.concat([before.f, before.g, before.h], axis=-2)  # (S, R, 3 D, Dv)
    return weights @ x.v + queries @ sums
