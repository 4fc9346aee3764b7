"""The default logits (ZS-LOG-DEFAULT) of a causal or bidirectional call, laid out by its
chunk plan: each sequence's prefix (or whole) mean of the keys, from its own key sum."""

from __future__ import annotations

import math

import torch

from zeros_ref.kernel import State

from .plan import ChunkPlan, counts, per_chunk
from .slab import links

__all__ = ["default_logits"]


def default_logits(k: torch.Tensor, state: State, causal: bool, plan: ChunkPlan,
                    slab_size: int) -> torch.Tensor:
    """ZS-LOG-DEFAULT for the keys (R, nc C, D) of the chunks of `plan`, each sequence from its
    own key sum in `state` (leading axes (S, R)): ``-<k_t, kbar_t> / sqrt(D)``.

    Causal: ``sum_{i<=t} k_i`` in two levels (within the chunk, then the chunks before it in
    its sequence), so that rounding grows with C + N/C terms; a slab of chunks at a time, so
    that the temporaries stay small. Bidirectional: every key of the sequence. Padding keys
    are zero."""
    rows, length, d = k.shape
    chunk, nc = plan.chunk, plan.chunks
    blocks = k.reshape(rows, nc, chunk, d)
    if not causal:
        valid = plan.valid.reshape(nc, chunk).to(k.dtype)  # padding keys are not zero
        totals = torch.einsum("rncd,nc->nrd", blocks, valid)  # (nc, R, D)
        sums = totals.new_zeros((plan.count, rows, d)).index_add_(0, plan.segment, totals)
        lengths = torch.tensor(plan.lengths, dtype=k.dtype, device=k.device)
        kbar = (sums / (1.0 + lengths[:, None, None]))[plan.segment].transpose(0, 1)
        return -(blocks * kbar[:, :, None]).sum(dim=-1).reshape(rows, length) / math.sqrt(d)
    ones = torch.ones(chunk, chunk, dtype=k.dtype, device=k.device).tril_()
    prior = per_chunk(state.key_sum, plan.segment)  # (R, nc, D) each chunk's sequence
    carry, dots = k.new_zeros((rows, d)), []
    for part, seg in zip(torch.split(blocks, slab_size, dim=1),
                         torch.split(plan.start, slab_size), strict=True):
        within = ones @ part  # (R, S, C, D): sums within each chunk (faster than cumsum)
        totals = within[:, :, -1]
        lower, entering = links(seg)
        first = prior[:, len(dots) * slab_size:][:, :seg.shape[0]]  # (R, S, D)
        entry = torch.where(entering[:, None], carry[:, None], first)
        before = entry + lower.to(k.dtype) @ totals  # keys before each chunk, its sequence's
        carry = before[:, -1] + totals[:, -1]  # (before `within`, of which totals is a view)
        dots.append((part * within.add_(before[:, :, None])).sum(dim=-1))  # (R, S, C)
    count = 1.0 + counts(state, plan, k.dtype)  # (nc, C): 1 + n + i
    return (torch.cat(dots, dim=1) / (-math.sqrt(d) * count)).reshape(rows, length)
