"""The default logits (ZS-LOG-DEFAULT) of a causal or bidirectional call, laid out by its
chunk plan: each sequence's prefix (or whole) mean of the keys, from its own key sum."""

from __future__ import annotations

import math

import torch

from zeros_ref.kernel import State

from .plan import ChunkPlan, counts, per_chunk, runs, to_slots
from .slab import links

__all__ = ["default_logits", "key_sums"]


def key_sums(k: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """The sum of the keys of each sequence of `plan`, (S, R, D), from the keys (R, N, D) of
    the call's tokens (one pass over them; an empty sequence's sum is zero)."""
    rows, _, d = k.shape
    sequence = plan.segment[plan.place // plan.chunk]  # (N,) the sequence of each token
    sums = k.new_zeros((rows, plan.count, d)).index_add_(1, sequence, k)
    return sums.transpose(0, 1)


def default_logits(k: torch.Tensor, state: State, causal: bool, plan: ChunkPlan,
                   slab_size: int) -> torch.Tensor:
    """ZS-LOG-DEFAULT for the keys (R, N, D) of the call's tokens, laid out in the slots of
    `plan` (R, nc C), each sequence from its own key sum in `state` (leading axes (S, R)):
    ``-<k_t, kbar_t> / sqrt(D)``.

    Causal: ``sum_{i<=t} k_i`` in two levels (within the chunk, then the chunks before it in
    its sequence), so that rounding grows with C + N/C terms. Bidirectional: every key of the
    sequence (`key_sums`). Either way a slab of chunks at a time, their run of keys laid out
    in their slots (`plan.to_slots`), so that the temporaries stay small. The logits of
    padding slots are not used."""
    rows, _, d = k.shape
    chunk, nc = plan.chunk, plan.chunks
    token = plan.token.reshape(nc, chunk)
    pieces = zip(torch.split(k, runs(plan.bounds, slab_size), dim=1),
                 torch.split(token, slab_size), torch.split(plan.start, slab_size),
                 strict=True)
    if causal:
        ones = torch.ones(chunk, chunk, dtype=k.dtype, device=k.device).tril_()
        prior = per_chunk(state.key_sum, plan.segment)  # (R, nc, D) each chunk's sequence
        scale = -math.sqrt(d) * (1.0 + counts(state, plan, k.dtype))  # (nc, C): 1 + n + i
    else:
        lengths = torch.tensor(plan.lengths, dtype=k.dtype, device=k.device)
        kbar = key_sums(k, plan) / (1.0 + lengths[:, None, None])  # (S, R, D)
        means = kbar[plan.segment].transpose(0, 1)[:, :, None]  # (R, nc, 1, D) its sequence's
        scale = -math.sqrt(d)
    carry, dots, at = k.new_zeros((rows, d)), [], 0
    for run, tok, seg in pieces:
        part, size = to_slots(run, tok), seg.shape[0]  # (R, S, C, D)
        if causal:  # the sum of the keys up to each row, its sequence's
            within = ones @ part  # (R, S, C, D): sums within each chunk (faster than cumsum)
            totals = within[:, :, -1]
            lower, entering = links(seg)
            entry = torch.where(entering[:, None], carry[:, None], prior[:, at:at + size])
            before = entry + lower.to(k.dtype) @ totals  # keys before each chunk
            carry = before[:, -1] + totals[:, -1]  # (before `within`, of which totals is a view)
            read = within.add_(before[:, :, None])
        else:
            read = means[:, at:at + size]
        dots.append((part * read).sum(dim=-1))  # (R, S, C)
        at += size
    return (torch.cat(dots, dim=1) / scale).reshape(rows, nc * chunk)
