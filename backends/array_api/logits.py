"""Default logits of the array-API form (ZS-LOG-DEFAULT): ``s_t = -<k_t, kbar_t> / sqrt(D)``,
kbar_t the mean of the keys up to t (causal, an initial state's included) or of the whole
sequence (bidirectional), with one pseudo-count.

Causal logits need each key's prefix sum within its sequence. A scan over slabs (the one of
the form, `scans.Scan`) carries the running key sum of the sequence in progress, as the main
scan carries its sums (`slab.links` says which chunks of a slab continue which sequence),
so that the keys are read a slab at a time; within a chunk, ``<k_t, sum_{i <= t} k_i>`` is
a row sum of the chunk's Gram matrix. A non-finite key spoils its own row's logit and no
other (later rows of its sequence are NaN anyway, spec 8): the sums take it as zero.
"""

from __future__ import annotations

from typing import Any

from zeros_ref.kernel import State

from .plan import Plan
from .scans import Scan, segmented_scan
from .slab import links

__all__ = ["default_logits"]


def default_logits(xp: Any, k: Any, st: State, plan: Plan, held: Any, *, causal: bool,
                   depth: Any, slab: int, scan: Scan) -> Any:
    """The default logits (nc, R, C) of the keys `k` (nc, R, C, D), chunk first (padding
    slots hold anything); `st` the state before each sequence (S, R, ...) (its key sums),
    `held` (S,) its tokens; D is `depth` (0-d); `slab` and `scan` as in the form."""
    root = xp.sqrt(xp.astype(depth, k.dtype))
    if not causal:
        k = xp.where(plan.valid[:, None, :, None], k, 0.0)
        totals = segmented_scan(xp, xp.sum(k, axis=-2), plan.start, xp.add)  # (nc, R, D)
        whole = xp.take(xp.take(totals, plan.tail, axis=0), plan.segment, axis=0)
        lengths = xp.sum(xp.astype(plan.valid, k.dtype), axis=-1)  # (nc,) tokens per chunk
        per = xp.take(segmented_scan(xp, lengths, plan.start, xp.add), plan.tail, axis=0)
        count = 1.0 + xp.take(per, plan.segment, axis=0)[:, None, None]
        return -xp.sum(k * whole[..., None, :], axis=-1) / (count * root)
    index = xp.arange(k.shape[-2])
    seen = index[None, :] <= index[:, None]  # (C, C): key i is visible from query t

    def body(carry: Any, x: tuple[Any, Any, Any, Any]) -> tuple[Any, Any]:
        k, valid, start, segment = x  # (S, R, C, D), (S, C), (S,), (S,)
        k = xp.where(valid[:, None, :, None], k, 0.0)
        lower, entering = links(xp, start)
        finite = xp.where(xp.isfinite(k), k, 0.0)
        sums = xp.sum(finite, axis=-2)  # (S, R, D)
        flat = xp.astype(lower, k.dtype)
        entered = xp.where(entering[:, None, None], carry[None, ...],
                           xp.take(st.key_sum, segment, axis=0))
        before = entered + xp.reshape(flat @ xp.reshape(sums, (flat.shape[0], -1)),
                                      sums.shape)  # (S, R, D): the keys before each chunk
        gram = xp.where(seen, k @ xp.matrix_transpose(finite), 0.0)  # (S, R, C, C)
        dots = xp.sum(gram, axis=-1) + xp.sum(k * before[..., None, :], axis=-1)
        return before[-1, ...] + sums[-1, ...], dots

    xs = tuple(xp.reshape(x, (x.shape[0] // slab, slab, *x.shape[1:]))
               for x in (k, plan.valid, plan.start, plan.segment))
    _, dots = scan(body, xp.zeros(k.shape[1:2] + k.shape[3:], dtype=k.dtype), xs)
    dots = xp.reshape(dots, (-1, *dots.shape[2:]))  # (nc, R, C)
    count = xp.take(held, plan.segment, axis=0)[:, None] \
        + xp.astype(plan.position, held.dtype) + 2.0  # 1 + n_t
    return -dots / (count[:, None, :] * root)
