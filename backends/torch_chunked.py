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
  chunks are taken a slab of `SLAB` (`SLAB_TRAINING` with autograd) at a time: inside a slab
  every chunk at once (a decay matrix with exponents <= 0 for F and E), between slabs a
  carry, so the work is linear in N and a call dispatches a few dozen operations per slab.
  With autograd each slab is checkpointed: its intermediates are recomputed in the backward
  pass instead of kept.
- **Non-finite values** (ZS-ERR-NONFINITE, -V). Inputs are replaced by zeros where they are
  not finite, the form runs on finite numbers, and the rows a non-finite value reaches (its
  own row for q and the gates, every later row for k, v and the logits) are set to NaN at the
  end, as is a returned state: `where` selections, never a branch on tensor data.

Shapes: R rows (the flattened leading axes), N tokens padded to nc chunks of C, D and Dv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint

from zeros_ref.kernel import Inputs, State

__all__ = ["SLAB", "SLAB_TRAINING", "Chunks", "Form", "Sums", "attention", "slabs"]

SLAB = 32
"""Chunks computed together: one step of the loop over the sequence."""
SLAB_TRAINING = 16
"""The same when gradients are recorded: each slab is a checkpoint, recomputed in backward."""


class Chunks(NamedTuple):
    """What the chunk step of spec 4.2 reads, for every chunk of a causal call.

    Shapes: R rows, nc chunks of C tokens, D and Dv; padding tokens (after the N real ones)
    have s = rel = 0, w = 0 and zero vectors. Frames: m_row is row t's running max m_t,
    m_prev and m_end the running max before and at the end of each chunk (M_{c-1}, M_c).
    """

    t: torch.Tensor  # (nc, C) the count of tokens seen up to each row, state included
    q: torch.Tensor  # (R, nc, C, D) unit query directions
    k: torch.Tensor  # (R, nc, C, D) unit key directions
    v: torch.Tensor  # (R, nc, C, Dv) values
    s: torch.Tensor  # (R, nc, C) logits
    rel: torch.Tensor  # (R, nc, C) s - s_ref
    w: torch.Tensor  # (R, nc, C) exp(s - M_c) <= 1, the key weights in their chunk's frame
    m_row: torch.Tensor  # (R, nc, C) m_t
    decay: torch.Tensor  # (R, nc, C) exp(M_{c-1} - m_t) <= 1, moves the carried F and E to m_t
    mean: torch.Tensor  # (R, nc, C) sbar_t - s_ref
    first: torch.Tensor  # (R, nc, C) gate g1_t
    higher: torch.Tensor  # (R, nc, C) gate gh_t
    zero: torch.Tensor  # (R, nc, C) gate g0_t
    m_prev: torch.Tensor  # (R, nc) M_{c-1}
    m_end: torch.Tensor  # (R, nc) M_c


class Sums(NamedTuple):
    """The sums carried between chunks: F and E relative to the frame of the last chunk
    read, G' about s_ref (not sbar), H. Shapes (R, D, Dv), (R,), (R, D, Dv), (R, D, Dv)."""

    f: torch.Tensor
    e: torch.Tensor
    g: torch.Tensor
    h: torch.Tensor


Form = Callable[[Chunks, Sums], tuple[torch.Tensor, Sums]]
"""A chunked causal form: the outputs (R, nc, C, Dv) of every chunk and the sums after the
last, from `Chunks` and the sums before the first (in the frame M_{-1} = m_prev[:, 0])."""


def _peak(x: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of every vector along the last axis, (..., 1): NaN or inf exactly
    where the vector holds a non-finite value. Outside autograd: `_unit` does not depend on it
    (x / |x| is the same whatever positive number x is first divided by)."""
    return x.detach().abs().amax(dim=-1, keepdim=True)


def _unit(x: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last axis, zero for zero vectors, exact for any finite scale
    (each row divided by its largest magnitude `peak` first, so no square overflows)."""
    y = x / torch.where(peak > 0, peak, 1.0)
    norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return y / torch.where(norm > 0, norm, 1.0)


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` with non-finite entries replaced by 0, and where they were."""
    ok = torch.isfinite(x)
    return torch.where(ok, x, 0.0), ~ok


def _finite_rows(x: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` (..., D) with its non-finite vectors replaced by zero vectors, and which they were
    (...,), from `_peak` (one pass instead of an elementwise test)."""
    bad = ~torch.isfinite(peak)
    return torch.where(bad, 0.0, x), bad[..., 0]


def _prefix_sum(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inclusive cumulative sum along axis 1 of (R, N, ...) in two levels (within chunks, then
    over chunk totals), so that rounding grows with C + N/C terms rather than N."""
    r, n = x.shape[0], x.shape[1]
    blocks = x.reshape(r, n // chunk, chunk, *x.shape[2:])
    within = torch.cumsum(blocks, dim=2)
    totals = within[:, :, -1]
    before = torch.cumsum(totals, dim=1) - totals  # exclusive
    return (within + before.unsqueeze(2)).reshape(x.shape)


def _default_logits(k: torch.Tensor, state: State, causal: bool, chunk: int) -> torch.Tensor:
    """ZS-LOG-DEFAULT for (R, N, D) keys (N a multiple of `chunk` when causal)."""
    n, d = k.shape[1], k.shape[2]
    if causal:
        count = state.length + 1.0 + torch.arange(1, n + 1, dtype=k.dtype, device=k.device)
        kbar = (state.key_sum[:, None, :] + _prefix_sum(k, chunk)) / count[:, None]
    else:
        kbar = k.sum(dim=1, keepdim=True) / (1.0 + n)
    return -(k * kbar).sum(dim=-1) / math.sqrt(d)


def attention(inp: Inputs, state: State, *, causal: bool, chunk: int, return_state: bool,
              form: Form | None = None) -> tuple[torch.Tensor, State | None]:
    """Outputs (*B, N, Dv) in the input dtype, and the state after them if `return_state`.

    `inp` and `state` are those of `zeros_ref.kernel.check_call` (validated, broadcast, in
    the compute dtype). `form` computes the causal chunks (default `slabs`); everything
    around it (frames, default logits, non-finite values, the state) is this module's.
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
    # the logits enter sums and products over keys, so they are replaced by zeros.
    q, k_raw, v_raw = flat(inp.q, d), flat(inp.k, d), flat(inp.v, dv)
    g1, gh, g0 = (flat(g) for g in (inp.first, inp.higher, inp.zero))
    q_peak, k_peak = _peak(q), _peak(k_raw)
    k, bad_k = _finite_rows(k_raw, k_peak)
    v, bad_v = _finite_rows(v_raw, _peak(v_raw))
    s_given = _default_logits(k_raw, st, causal, chunk) if inp.logits is None else flat(
        inp.logits)
    s, bad_s = _finite(s_given)
    valid = torch.arange(length, device=q.device) < n  # (L,) real tokens, not padding
    bad_row = ~(torch.isfinite(q_peak[..., 0]) & torch.isfinite(g1) & torch.isfinite(gh)
                & torch.isfinite(g0))  # (R, L)
    bad_key = (bad_k | bad_v | bad_s) & valid
    qh = _recomputed(_unit, q, q_peak)
    kh = _recomputed(_unit, k, torch.where(bad_k[..., None], 0.0, k_peak))
    if causal:
        out, end = _causal(st, qh, kh, v, s, (g1, gh, g0), n, chunk, return_state,
                           form or slabs)
        poison = bad_row | (torch.cumsum(bad_key.to(torch.int32), dim=1) > 0)
    else:
        out, end = _bidirectional(qh, kh, v, s, (g1, gh, g0), n), None
        poison = bad_row | bad_key.any(dim=1, keepdim=True)
    out = torch.where(poison[..., None], float("nan"), out)
    out = out[:, :n].reshape(*batch, n, dv).to(inp.dtype)
    if end is None:
        return out, None
    spoilt = bad_key.any(dim=1)  # (R,): the state summarises a non-finite key, value or logit
    end = State(length=st.length + n, running_max=_spoil(end.running_max, spoilt),
                mean_offset=_spoil(end.mean_offset, spoilt),
                normaliser=_spoil(end.normaliser, spoilt), kv=_spoil(end.kv, spoilt),
                key_sum=st.key_sum + k_raw.sum(dim=1))
    return out, end.with_batch(torch, batch)


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


def _causal(st: State, qh: torch.Tensor, kh: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
            gates: tuple[torch.Tensor, ...], n: int, chunk: int, return_state: bool,
            form: Form) -> tuple[torch.Tensor, State | None]:
    """Spec 4.2 for every chunk: the frames and means of `Chunks`, then `form`. Shapes: qh, kh
    (R, L, D); v (R, L, Dv); s and the gates (R, L); L = nc C >= n real tokens. Returns
    (R, L, Dv) and the state (rows R; the caller sets its length and key sum)."""
    rows, length, d = qh.shape
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

    chunks = Chunks(t.reshape(nc, chunk), per_chunk(qh, d), per_chunk(kh, d),
                    per_chunk(v, dv), per_chunk(s), per_chunk(rel), w, m_row,
                    torch.exp(m_prev[..., None] - m_row), per_chunk(mean_rel),
                    *(per_chunk(g) for g in gates), m_prev, m_end)
    out, last = form(chunks, Sums(f0, st.normaliser, g0_ref, h0))
    out = out.reshape(rows, length, dv)
    if not return_state:
        return out, None
    m_last, mean_last = m_end[:, -1], mean_rel[:, n - 1]  # sbar - s_ref after the last token
    kv = torch.stack([last.f, last.g - mean_last[:, None, None] * last.h, last.h], dim=1)
    end = State(length=st.length, running_max=m_last, mean_offset=mean_last + s_ref - m_last,
                normaliser=last.e, kv=kv, key_sum=st.key_sum)
    return out, end


def slabs(chunks: Chunks, sums: Sums) -> tuple[torch.Tensor, Sums]:
    """The `Form` of this module: a slab of `SLAB` chunks at a time (`SLAB_TRAINING`, each
    checkpointed, when autograd records), every chunk of a slab at once."""
    slab = SLAB_TRAINING if _recording(*chunks[1:]) else SLAB
    # Split once (its backward joins the gradients of all slabs in one tensor), not sliced per
    # slab (each slice's backward would allocate a whole-sized gradient).
    pieces = zip(torch.split(chunks.t, slab),
                 *(torch.split(x, slab, dim=1) for x in chunks[1:]))
    outputs = []
    for args in pieces:
        out, after = _recomputed(_slab, *args, *sums)
        outputs.append(out)
        sums = Sums(*after)
    return torch.cat(outputs, dim=1), sums


def _slab(tc: torch.Tensor, qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
          s: torch.Tensor, rel: torch.Tensor, w: torch.Tensor, m_row: torch.Tensor,
          decay: torch.Tensor, mean_c: torch.Tensor, g1: torch.Tensor, gh: torch.Tensor,
          g0: torch.Tensor, m_prev: torch.Tensor, m_end: torch.Tensor, f0: torch.Tensor,
          e0: torch.Tensor, gref0: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Outputs (R, S, C, Dv) of a slab of S chunks and the sums after it (F, E, G', H).

    Step 6 for every chunk of the slab, U_c = Kf^T V with features [w kh, (s - s_ref) kh, kh]
    (F relative to M_c); F and E after chunk c are ``sum_{j<=c} exp(M_j - M_c) U_j`` plus the
    carry moved from the frame before the slab, one product with a decay matrix whose
    exponents are all <= 0; G' and H are cumulative sums. Then steps 2-5 (`_chunk_outputs`)
    with the sums each chunk reads.
    """
    rows, count = w.shape[0], w.shape[1]
    d, dv = kc.shape[-1], vc.shape[-1]
    keys = kc.transpose(-1, -2)  # (R, S, D, C)
    update_f = (keys @ (w[..., None] * vc)).reshape(rows, count, d * dv)
    update_g, update_h = keys @ (rel[..., None] * vc), keys @ vc  # (R, S, D, Dv)
    index = torch.arange(count, device=w.device)
    lower = index[None, :] <= index[:, None]  # chunk j feeds chunk c >= j
    gaps = torch.where(lower, m_end[..., None, :] - m_end[..., :, None], float("-inf"))
    decays = torch.exp(gaps)  # (R, S, S)
    moved = torch.exp(m_prev[:, :1] - m_end)  # (R, S): the carry into chunk c's frame
    f_after = decays @ update_f + moved[..., None] * f0.reshape(rows, 1, d * dv)
    e_after = (decays @ w.sum(dim=-1)[..., None])[..., 0] + moved * e0[:, None]
    ones = lower.to(w.dtype)  # cumulative sums as products (faster than cumsum on dim 1)
    g_after = (ones @ update_g.reshape(rows, count, d * dv)).reshape(update_g.shape)
    h_after = (ones @ update_h.reshape(rows, count, d * dv)).reshape(update_h.shape)
    g_after, h_after = g_after + gref0[:, None], h_after + h0[:, None]
    f_before = torch.cat([f0.reshape(rows, 1, d * dv), f_after[:, :-1]], dim=1)
    e_before = torch.cat([e0[:, None], e_after[:, :-1]], dim=1)
    out = _chunk_outputs(tc, qc, kc, vc, s, rel, m_row, decay, e_before, mean_c, g1, gh, g0,
                         f_before.reshape(rows, count, d, dv), g_after - update_g,
                         h_after - update_h)
    after = (f_after[:, -1].reshape(rows, d, dv), e_after[:, -1], g_after[:, -1],
             h_after[:, -1])
    return out, after


def _chunk_outputs(tc: torch.Tensor, qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
                   s: torch.Tensor, rel: torch.Tensor, m_row: torch.Tensor,
                   decay: torch.Tensor, e_before: torch.Tensor, mean_c: torch.Tensor,
                   g1: torch.Tensor, gh: torch.Tensor, g0: torch.Tensor,
                   f_before: torch.Tensor, g_before: torch.Tensor,
                   h_before: torch.Tensor) -> torch.Tensor:
    """Steps 2-5 of a slab of chunks: outputs (R, nc, C, Dv).

    Within the chunk, W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (s_i - sbar_t) + c_t) for
    i <= t, with a_t = gh_t / E_t and E_t the carried normaliser (moved to row t's frame by
    `decay`) plus the chunk's own exponentials; then ``qh_t^T (a_t decay_t F + b_t G' +
    (c_t - b_t (sbar_t - s_ref)) H)`` for the chunks before. Shapes: tc (nc, C); qc, kc
    (R, nc, C, D); vc (R, nc, C, Dv); s, rel, m_row, decay, mean_c and the gates (R, nc, C);
    e_before (R, nc); f_before, g_before, h_before (R, nc, D, Dv).
    """
    chunk = qc.shape[2]
    index = torch.arange(chunk, device=s.device)
    visible = index[None, :] <= index[:, None]  # (C, C)
    gap = torch.where(visible, s[..., None, :] - m_row[..., None], float("-inf"))
    e = torch.exp(gap)  # (R, nc, C, C): exp(s_i - m_t), 0 above the diagonal
    del gap
    a = gh / (decay * e_before[..., None] + e.sum(dim=-1))  # gh / E_t, E_t >= 1
    b, c = (g1 - gh) / tc, (g0 - gh) / tc
    r = a[..., None] * e
    del e
    r = r + b[..., None] * (rel[..., None, :] - mean_c[..., None]) + c[..., None]
    weights = torch.where(visible, r * (qc @ kc.transpose(-1, -2)), 0.0)
    del r
    out = weights @ vc
    del weights
    out = out + (a * decay)[..., None] * (qc @ f_before)
    out = out + b[..., None] * (qc @ g_before)
    return out + (c - b * mean_c)[..., None] * (qc @ h_before)
