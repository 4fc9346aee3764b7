"""The chunk-parallel form of ZeroS on torch tensors: every chunk at once, no host syncs.

It must equal the reference form, `zeros_ref.attention` (spec 4.2 causal, 4.3 bidirectional),
and computes the same sums with the same frames, arranged for a device that wants few large
operations and no data-dependent branches:

- **Frames.** Row t keeps its own running max m_t (a `cummax`), so within a chunk the C x C
  weights ``exp(s_i - m_t)`` are exact for every row (spec 4.2, steps 1-4). Between chunks the
  state after chunk c is kept relative to M_c, the running max at its end (`cummax` over the
  chunk maxima); row t of chunk c reads it with ``exp(M_{c-1} - m_t) <= 1``.
- **Scans.** The first-order sum is kept relative to s_ref, a logit every row of the call sees
  (the first one, or the state's running max), which makes G' and H plain cumulative sums over
  the chunk updates. Only F and E decay, ``S_c = exp(M_{c-1} - M_c) S_{c-1} + U_c``. The
  chunks are taken a slab at a time (`slab.slab`; `slab_size` chunks, at most
  `SLAB_TRAINING` with autograd): inside a slab every chunk at once (a decay matrix with
  exponents <= 0 for F and E), between slabs a carry, so the work is linear in N and a call
  dispatches a few hundred operations per slab, most of them views. With autograd each slab
  is checkpointed: its intermediates are recomputed in the backward pass instead of kept.
- **Memory traffic.** Each slab reads its raw vectors once and takes their peaks, unit
  directions and non-finite screening itself, so that a call's temporaries are a slab's
  (a few MiB, in the caches) rather than whole copies of q, k and v.
- **Non-finite values** (ZS-ERR-NONFINITE, -V). Vectors and logits that are not finite are
  replaced by zeros, the form runs on finite numbers, and the rows a non-finite value reaches
  (its own row for q and the gates, every later row for k, v and the logits, a flag carried
  from slab to slab) are set to NaN, as is a returned state: `where` selections and masks,
  never a branch on tensor data.

Shapes: R rows (the flattened leading axes), N tokens padded to nc chunks of C, D and Dv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import repeat
from typing import Any

import torch
import torch.utils.checkpoint

from zeros_ref.kernel import Inputs, State

from .slab import Chunks, Sums, broken, directions, peak, slab

__all__ = ["SLAB", "SLAB_TRAINING", "Chunks", "Form", "Sums", "attention", "peak", "slabs"]

SLAB = 32
"""Chunks computed together, one step of the loop over the sequence, unless `attention` is
given another number (the torch backend's choice per device: small enough for a CPU's
caches, large enough for few launches on a GPU)."""
SLAB_TRAINING = 16
"""At most this many when gradients are recorded: each slab is a checkpoint, recomputed in
backward."""


Form = Callable[[Chunks, Sums], tuple[torch.Tensor, Sums]]
"""A chunked causal form: the outputs (R, nc, C, Dv) of every chunk and the sums after the
last, from `Chunks` and the sums before the first (in the frame M_{-1} = m_prev[:, 0])."""


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` with non-finite entries replaced by 0, and where they were."""
    ok = torch.isfinite(x)
    return torch.where(ok, x, 0.0), ~ok


def _prefix_sum(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inclusive cumulative sum along axis 1 of (R, N, ...) in two levels (within chunks, then
    over chunk totals), so that rounding grows with C + N/C terms rather than N."""
    r, n = x.shape[0], x.shape[1]
    blocks = x.reshape(r, n // chunk, chunk, *x.shape[2:])
    within = torch.cumsum(blocks, dim=2)
    totals = within[:, :, -1]
    before = torch.cumsum(totals, dim=1) - totals  # exclusive
    return (within + before.unsqueeze(2)).reshape(x.shape)


def _default_logits(k: torch.Tensor, state: State, causal: bool, chunk: int,
                    slab_size: int) -> torch.Tensor:
    """ZS-LOG-DEFAULT for (R, N, D) keys (N a multiple of `chunk` when causal):
    ``-<k_t, kbar_t> / sqrt(D)``, with ``sum_{i<=t} k_i`` taken in two levels (within the
    chunk, then the chunks before), so that rounding grows with C + N/C terms; a slab of
    chunks at a time, so that the temporaries stay small."""
    rows, n, d = k.shape
    if not causal:
        kbar = k.sum(dim=1, keepdim=True) / (1.0 + n)
        return -(k * kbar).sum(dim=-1) / math.sqrt(d)
    ones = torch.ones(chunk, chunk, dtype=k.dtype, device=k.device).tril_()
    key_sum, dots = state.key_sum, []
    for part in torch.split(k.reshape(rows, n // chunk, chunk, d), slab_size, dim=1):
        within = ones @ part  # (R, S, C, D): sums within each chunk (faster than cumsum)
        totals = within[:, :, -1]
        before = key_sum[:, None] + torch.cumsum(totals, dim=1) - totals  # (R, S, D)
        key_sum = before[:, -1] + totals[:, -1]  # (before `within`, of which totals is a view)
        dots.append((part * within.add_(before[:, :, None])).sum(dim=-1))  # (R, S, C)
    count = state.length + 1.0 + torch.arange(1, n + 1, dtype=k.dtype, device=k.device)
    return torch.cat(dots, dim=1).reshape(rows, n) / (-math.sqrt(d) * count)


def attention(inp: Inputs, state: State, *, causal: bool, chunk: int, return_state: bool,
              form: Form | None = None,
              slab_size: int = SLAB) -> tuple[torch.Tensor, State | None]:
    """Outputs (*B, N, Dv) in the input dtype, and the state after them if `return_state`.

    `inp` and `state` are those of `zeros_ref.kernel.check_call` (validated, broadcast, in
    the compute dtype), `chunk` the chunk length C and `slab_size` the chunks of a slab.
    `form` computes the causal chunks; everything around it (frames,
    default logits, non-finite values, the state) is this module's. Without a form, the
    chunks are computed by `slab`, a slab of chunks at a time, with the unit directions taken
    inside each slab (the same as `slabs`, whose inputs are taken for the whole call first).
    """
    batch, n, d, dv = inp.batch, inp.n, inp.q.shape[-1], inp.v.shape[-1]
    rows = math.prod(batch)
    st = state.with_batch(torch, (rows,))
    if n == 0:
        out = inp.v.new_zeros((*batch, 0, dv)).to(inp.dtype)
        return out, (state if return_state else None)
    nc = -(-n // chunk) if causal else 1
    length = nc * chunk if causal else n
    pad = length - n

    def flat(x: torch.Tensor, *tail: int) -> torch.Tensor:
        x = x.reshape(rows, n, *tail)
        return torch.nn.functional.pad(x, (0, 0) * len(tail) + (0, pad)) if pad else x

    # A non-finite q or gate reaches its own row only, through row-wise operations; k, v and
    # the logits enter sums and products over keys, so they are replaced by zeros (the
    # vectors in `directions`, a slab at a time) and the rows they reach set to NaN.
    q, k, v = flat(inp.q, d), flat(inp.k, d), flat(inp.v, dv)
    g1, gh, g0 = (flat(g) for g in (inp.first, inp.higher, inp.zero))
    s_given = _default_logits(k, st, causal, chunk, slab_size) if inp.logits is None else flat(
        inp.logits)
    s, bad_s = _finite(s_given)
    bad_gate = ~(torch.isfinite(g1) & torch.isfinite(gh) & torch.isfinite(g0))  # (R, L)
    if causal:
        out, end = _causal(st, (q, k, v), s, (bad_gate, bad_s), (g1, gh, g0), n, chunk,
                           return_state, form, slab_size)
    else:
        peaks = peak(q), peak(k), peak(v)  # (R, L) each
        qh, kh, v = _recomputed(directions, q, k, v, *peaks[:2])
        out, end = _bidirectional(qh, kh, v, s, (g1, gh, g0), n), None
        bad_key = broken(torch.maximum(peaks[1], peaks[2])) | bad_s
        poison = bad_gate | broken(peaks[0]) | bad_key.any(dim=1, keepdim=True)
        out = torch.where(poison[..., None], math.nan, out)
    out = out[:, :n].reshape(*batch, n, dv).to(inp.dtype)
    return out, (None if end is None else end.with_batch(torch, batch))


def _spoil(x: torch.Tensor, spoilt: torch.Tensor) -> torch.Tensor:
    flags = spoilt.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(flags, float("nan"), x)


def _recomputed(step: Any, *args: Any) -> Any:
    """`step(*args)`; when gradients are recorded, its intermediates are recomputed in the
    backward pass instead of kept (activation checkpointing): training memory stays a small
    multiple of the inputs rather than of every C x C and (D, Dv) temporary."""
    if _recording(*(x for x in args if isinstance(x, torch.Tensor))):
        return torch.utils.checkpoint.checkpoint(step, *args, use_reentrant=False)
    return step(*args)


def _recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on these tensors (a flag, not tensor data)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)


def _bidirectional(qh: torch.Tensor, kh: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                   gates: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    """Spec 4.3: one whole-sequence state, read by every row with n = N."""
    g1, gh, g0 = gates
    top = s.amax(dim=1, keepdim=True)  # (R, 1), also s_ref
    rel = s - top  # (R, N)
    w = torch.exp(rel)
    mean_rel = rel.mean(dim=1, keepdim=True)  # sbar - s_ref
    keys = torch.cat([w[..., None] * kh, rel[..., None] * kh, kh], dim=-1)  # (R, N, 3D)
    sums = keys.transpose(1, 2) @ v  # (R, 3D, Dv): F, G', H
    a = gh / w.sum(dim=1, keepdim=True)
    b = (g1 - gh) / n
    c = (g0 - gh) / n - b * mean_rel
    query = torch.cat([a[..., None] * qh, b[..., None] * qh, c[..., None] * qh], dim=-1)
    return query @ sums


def _causal(st: State, vectors: tuple[torch.Tensor, ...], s: torch.Tensor,
            bad: tuple[torch.Tensor, ...], gates: tuple[torch.Tensor, ...], n: int,
            chunk: int, return_state: bool, form: Form | None,
            slab_size: int) -> tuple[torch.Tensor, State | None]:
    """Spec 4.2 for every chunk: the frames and means of `Chunks`, then `form`. Shapes: the
    raw vectors q, k (R, L, D) and v (R, L, Dv); s, the gates and `bad` (rows whose gates,
    keys whose logits are not finite) (R, L); L = nc C >= n real tokens. Returns (R, L, Dv)
    with NaN where a non-finite input reaches, and the state (rows R, NaN after a non-finite
    key, value or logit)."""
    rows, length, _ = vectors[0].shape
    keys, v = vectors[1], vectors[2]  # the raw keys, for the state's key sum
    dv, nc = v.shape[-1], length // chunk
    valid = torch.arange(length, device=s.device) < n  # (L,) real tokens, not padding
    s_ref = st.running_max if st.length else s[:, 0]  # a logit every row of the call sees
    # Step 1: running maxima, per row (m_t) and at chunk ends (M_c); padding is below all.
    s_max = torch.where(valid, s, float("-inf")).reshape(rows, nc, chunk)
    tops = torch.cat([s_ref[:, None], s_max.amax(dim=-1)], dim=1)  # (R, nc + 1)
    frames = torch.cummax(tops, dim=1).values
    m_prev, m_end = frames[:, :-1], frames[:, 1:]  # M_{c-1}, M_c (R, nc)
    m_row = torch.maximum(m_prev[..., None], torch.cummax(s_max, dim=-1).values)  # (R, nc, C)
    # Step 3 (mean): sbar_t - s_ref from a two-level prefix sum of s - s_ref.
    rel = torch.where(valid, s - s_ref[:, None], 0.0)  # (R, L)
    t = st.length + torch.arange(1, length + 1, dtype=s.dtype, device=s.device)  # (L,)
    mean_rel = (st.length * st.mean_offset[:, None] + _prefix_sum(rel, chunk)) / t  # (R, L)
    # Key weights relative to their chunk's end frame, exp(s_i - M_c) <= 1 (0 for padding).
    w = torch.exp(torch.where(valid.reshape(nc, chunk), s.reshape(rows, nc, chunk)
                              - m_end[..., None], float("-inf")))  # (R, nc, C)
    # The sums before the call: F relative to m_prev, E, G' about s_ref (not sbar), H.
    f0, g_prev, h0 = st.kv[:, State.F], st.kv[:, State.G], st.kv[:, State.H]
    g0_ref = g_prev + st.mean_offset[:, None, None] * h0 if st.length else g_prev

    def per_chunk(x: torch.Tensor, *tail: int) -> torch.Tensor:
        return x.reshape(rows, nc, chunk, *tail)

    if form is not None:  # the form takes unit directions and finite values
        peaks = peak(vectors[0]), peak(vectors[1]), peak(vectors[2])  # (R, L)
        bad_key = broken(torch.maximum(peaks[1], peaks[2])) | bad[1]
        poison = (bad[0] | broken(peaks[0])
                  | (torch.cumsum(bad_key.to(torch.int32), dim=1) > 0))
        vectors, seen = _recomputed(directions, *vectors, *peaks[:2]), bad_key.any(dim=1)
    q, k, v = (per_chunk(x, x.shape[-1]) for x in vectors)
    chunks = Chunks(t.reshape(nc, chunk), q, k, v, per_chunk(s), per_chunk(rel), w, m_row,
                    torch.exp(m_prev[..., None] - m_row), per_chunk(mean_rel),
                    *(per_chunk(g) for g in gates), m_prev, m_end)
    sums = Sums(f0, st.normaliser, g0_ref, h0)
    if form is None:
        out, last, seen = _slabs(chunks, sums, tuple(per_chunk(x) for x in bad),
                                 slab_size)
        out = out.reshape(rows, length, dv)
    else:
        out, last = form(chunks, sums)
        out = torch.where(poison[..., None], math.nan, out.reshape(rows, length, dv))
    if not return_state:
        return out, None
    m_last, mean_last = m_end[:, -1], mean_rel[:, n - 1]  # sbar - s_ref after the last token
    kv = torch.stack([last.f, last.g - mean_last[:, None, None] * last.h, last.h], dim=1)
    end = State(length=st.length + n, running_max=_spoil(m_last, seen),
                mean_offset=_spoil(mean_last + s_ref - m_last, seen),
                normaliser=_spoil(last.e, seen), kv=_spoil(kv, seen),
                key_sum=st.key_sum + keys.sum(dim=1))
    return out, end


def slabs(chunks: Chunks, sums: Sums) -> tuple[torch.Tensor, Sums]:
    """The `Form` of this module: a slab of `SLAB` chunks at a time (`SLAB_TRAINING`, each
    checkpointed, when autograd records), every chunk of a slab at once (`slab`)."""
    out, sums, _ = _slabs(chunks, sums, None, SLAB)
    return out, sums


def _slabs(chunks: Chunks, sums: Sums, bad: tuple[torch.Tensor, ...] | None,
           slab_size: int) -> tuple[torch.Tensor, Sums, torch.Tensor | None]:
    """`slabs` with `slab_size` chunks a step; on raw vectors if `bad` gives the rows whose gates
    and the keys whose logits are not finite, (R, nc, C) each (see `slab`), also returning
    the rows (R,) whose state has met a non-finite key, value or logit."""
    recording = _recording(*chunks[1:])
    size = min(slab_size, SLAB_TRAINING) if recording else slab_size
    # Split once (its backward joins the gradients of all slabs in one tensor), not sliced per
    # slab (each slice's backward would allocate a whole-sized gradient).
    pieces = zip(torch.split(chunks.t, size), *(torch.split(x, size, dim=1) for x in chunks[1:]))
    parts = zip(*(torch.split(x, size, dim=1) for x in bad)) if bad else repeat(None)
    seen = chunks.s.new_zeros(chunks.s.shape[0], dtype=torch.bool) if bad else None
    rows, nc, chunk, _ = chunks.v.shape
    out = chunks.v.new_empty((rows, nc, chunk, chunks.v.shape[-1]))
    # Each slab's output is copied into place at once, so that its buffer is reused by the
    # next slab rather than kept until the end (fresh memory costs page faults).
    start = 0
    for piece, part in zip(pieces, parts):
        args = (Chunks(*piece), sums, None if part is None else (*part, seen))
        if recording:  # recomputed in backward: only the slab's inputs are kept
            piece_out, sums, seen = torch.utils.checkpoint.checkpoint(slab, *args,
                                                                      use_reentrant=False)
        else:
            piece_out, sums, seen = slab(*args)
        out[:, start:start + piece_out.shape[1]] = piece_out
        start += piece_out.shape[1]
    return out, sums, seen
