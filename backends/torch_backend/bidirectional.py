"""The bidirectional form (spec 4.3) on the chunks of a call's plan: one whole-sequence state
per sequence, read by every row of it with its length n."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint

from .plan import ChunkPlan, runs, segmented_scan, to_tokens
from .screen import Screened, directions

__all__ = ["bidirectional", "recomputed"]


def recomputed(step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)`; when gradients are recorded, its intermediates are recomputed in the
    backward pass instead of kept (activation checkpointing): training memory stays a small
    multiple of the inputs rather than of every temporary."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad
                                       for x in args):
        return torch.utils.checkpoint.checkpoint(step, *args, use_reentrant=False)
    return step(*args)


def bidirectional(clean: Screened, plan: ChunkPlan, slab_size: int) -> torch.Tensor:
    """Spec 4.3 for every sequence of `plan`: one whole-sequence state each, read by every
    row of the sequence with its length n. Returns the outputs of the tokens, (R, N, Dv).

    Each sequence's frame is its own max, which is also its reference logit. The sums are
    taken a slab of chunks at a time (K_c^T [w v, rel v, v] per chunk, added into the
    sequence's) and read the same way, each slab's run of tokens laid out in its slots
    (`screen.directions`), so that the temporaries stay a slab's."""
    rows = clean.s.shape[0]
    chunk, nc, count = plan.chunk, plan.chunks, plan.count
    d, dv = clean.q.shape[-1], clean.v.shape[-1]
    valid = plan.valid.reshape(nc, chunk)
    s = clean.s.reshape(rows, nc, chunk)
    tops = torch.where(valid, s, float("-inf")).amax(dim=-1)  # (R, nc)
    top = segmented_scan(tops, plan.start, torch.maximum)[:, plan.tail][:, plan.segment]
    rel = torch.where(valid, s - top[..., None], 0.0)  # (R, nc, C), also s - s_ref
    w = torch.exp(torch.where(valid, rel, float("-inf")))
    lengths = torch.tensor(plan.lengths, dtype=s.dtype, device=s.device)[plan.segment]
    totals = torch.stack([w.sum(dim=-1), rel.sum(dim=-1)]).transpose(0, 2)  # (nc, R, 2)
    per_seq = totals.new_zeros((count, rows, 2)).index_add_(0, plan.segment, totals)
    e, mean = (per_seq[..., j][plan.segment].T for j in range(2))  # (R, nc) each
    mean = mean / lengths  # sbar - s_ref
    sums = s.new_zeros((count, rows, 3 * d, dv))
    held = runs(plan.bounds, slab_size)
    pieces = list(zip(*(torch.split(x, held, dim=1) for x in (clean.q, clean.k, clean.v)),
                      torch.split(plan.token.reshape(nc, chunk), slab_size),
                      torch.split(plan.place, held),
                      *(torch.split(x.reshape(rows, nc, chunk), slab_size, dim=1)
                        for x in (clean.q_peak, clean.k_peak)),
                      torch.split(w, slab_size, dim=1), torch.split(rel, slab_size, dim=1),
                      torch.split(plan.segment, slab_size), strict=True))
    for q, k, v, token, _, q_peak, k_peak, w_c, rel_c, seg in pieces:
        _, kh, vc = recomputed(directions, q, k, v, token, q_peak, k_peak)
        keys = torch.cat([w_c[..., None] * kh, rel_c[..., None] * kh, kh], dim=-1)
        update = keys.transpose(-1, -2) @ vc  # (R, S, 3D, Dv)
        sums.index_add_(0, seg, update.transpose(0, 1))
    a_all = clean.higher.reshape(rows, nc, chunk) / e[..., None]
    b_all = (clean.first.reshape(rows, nc, chunk) - clean.higher.reshape(rows, nc, chunk)) \
        / lengths[:, None]
    c_all = (clean.zero.reshape(rows, nc, chunk) - clean.higher.reshape(rows, nc, chunk)) \
        / lengths[:, None] - b_all * mean[..., None]
    outs, at = [], 0
    for q, k, v, token, place, q_peak, k_peak, _, _, seg in pieces:
        size = seg.shape[0]
        qh, _, _ = recomputed(directions, q, k, v, token, q_peak, k_peak)
        coef = (x[:, at:at + size, :, None] for x in (a_all, b_all, c_all))
        query = torch.cat([x * qh for x in coef], dim=-1)  # (R, S, C, 3D)
        outs.append(to_tokens(query @ sums.index_select(0, seg).transpose(0, 1), place))
        at += size
    return torch.cat(outs, dim=1)
