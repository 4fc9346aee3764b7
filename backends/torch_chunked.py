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
  the chunk updates. Only F and E decay, ``S_c = exp(M_{c-1} - M_c) S_{c-1} + U_c``: a scan in
  two levels, a decay matrix inside groups of `GROUP` chunks and a short loop over groups
  (``N / (C GROUP)`` steps of two operations).
- **Non-finite values** (ZS-ERR-NONFINITE, -V). Inputs are replaced by zeros where they are
  not finite, the form runs on finite numbers, and the rows a non-finite value reaches (its
  own row for q and the gates, every later row for k, v and the logits) are set to NaN at the
  end, as is a returned state: `where` selections, never a branch on tensor data.

Shapes: R rows (the flattened leading axes), N tokens padded to nc chunks of C, D and Dv.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.utils.checkpoint

from zeros_ref.kernel import Inputs, State

__all__ = ["GROUP", "SLAB", "attention"]

GROUP = 16
"""Chunks per group of the two-level scan of F and E."""
SLAB = 16
"""Chunks whose C x C weights are formed together when gradients are recorded, so that the
backward pass recomputes them a slab at a time (without autograd: all chunks at once)."""


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last axis, zero for zero vectors, exact for any finite scale
    (each row divided by its largest magnitude first, so no square overflows)."""
    peak = x.abs().amax(dim=-1, keepdim=True)
    y = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return y / torch.where(norm > 0, norm, torch.ones_like(norm))


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` with non-finite entries replaced by 0, and where they were (reduced over the last
    axis for vectors is the caller's job)."""
    ok = torch.isfinite(x)
    return torch.where(ok, x, torch.zeros_like(x)), ~ok


def _prefix_sum(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inclusive cumulative sum along axis 1 of (R, N, ...) in two levels (within chunks, then
    over chunk totals), so that rounding grows with C + N/C terms rather than N."""
    r, n = x.shape[0], x.shape[1]
    blocks = x.reshape(r, n // chunk, chunk, *x.shape[2:])
    within = torch.cumsum(blocks, dim=2)
    totals = within[:, :, -1]
    before = torch.cumsum(totals, dim=1) - totals  # exclusive
    return (within + before.unsqueeze(2)).reshape(x.shape)


def _scan_decayed(u: torch.Tensor, m_prev: torch.Tensor, m_end: torch.Tensor,
                  start: torch.Tensor) -> torch.Tensor:
    """States after every chunk of ``S_c = exp(M_{c-1} - M_c) S_{c-1} + U_c``, S_{-1} = start.

    Shapes: u (R, nc, P) with U_c relative to M_c; m_prev, m_end (R, nc) nondecreasing;
    start (R, P) relative to m_prev[:, 0]. Returns (R, nc, P), S_c relative to M_c.
    Inside a group of `GROUP` chunks, ``S_c = sum_j exp(M_j - M_c) U_j`` is one product with
    a decay matrix (every exponent <= 0); the carry between groups is a loop over groups.
    """
    r, nc, p = u.shape
    groups = -(-nc // GROUP)
    pad = groups * GROUP - nc
    if pad:  # empty chunks: no update, no growth of the max
        u = torch.cat([u, u.new_zeros(r, pad, p)], dim=1)
        m_end = torch.cat([m_end, m_end[:, -1:].expand(r, pad)], dim=1)
    mg = m_end.reshape(r, groups, GROUP)
    j = torch.arange(GROUP, device=u.device)
    lower = j[None, :] <= j[:, None]  # (GROUP, GROUP): chunk j feeds chunk c >= j
    gap = torch.where(lower, mg[..., None, :] - mg[..., :, None], float("-inf"))
    inside = torch.exp(gap) @ u.reshape(r, groups, GROUP, p)  # (R, groups, GROUP, P)
    # The carry into each group, relative to the max before the group, then moved to M_c.
    first_prev = torch.cat([m_prev[:, :1], mg[:, :-1, -1]], dim=1)  # (R, groups)
    carries, carry = [], start
    for g in range(groups):
        carries.append(carry)
        carry = torch.exp(first_prev[:, g] - mg[:, g, -1])[:, None] * carry + inside[:, g, -1]
    carried = torch.stack(carries, dim=1)  # (R, groups, P)
    into = torch.exp(first_prev[..., None] - mg)[..., None] * carried[:, :, None]
    return (inside + into).reshape(r, groups * GROUP, p)[:, :nc]


def _default_logits(k: torch.Tensor, state: State, causal: bool, chunk: int) -> torch.Tensor:
    """ZS-LOG-DEFAULT for (R, N, D) keys (N a multiple of `chunk` when causal)."""
    n, d = k.shape[1], k.shape[2]
    if causal:
        count = state.length + 1.0 + torch.arange(1, n + 1, dtype=k.dtype, device=k.device)
        kbar = (state.key_sum[:, None, :] + _prefix_sum(k, chunk)) / count[:, None]
    else:
        kbar = k.sum(dim=1, keepdim=True) / (1.0 + n)
    return -(k * kbar).sum(dim=-1) / math.sqrt(d)


def attention(inp: Inputs, state: State, *, causal: bool, chunk: int,
              return_state: bool) -> tuple[torch.Tensor, State | None]:
    """Outputs (*B, N, Dv) in the input dtype, and the state after them if `return_state`.

    `inp` and `state` are those of `zeros_ref.kernel.check_call` (validated, broadcast, in
    the compute dtype).
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
    q, k_raw = flat(inp.q, d), flat(inp.k, d)
    g1, gh, g0 = (flat(g) for g in (inp.first, inp.higher, inp.zero))
    k, bad_k = _finite(k_raw)
    v, bad_v = _finite(flat(inp.v, dv))
    s_given = _default_logits(k_raw, st, causal, chunk) if inp.logits is None else flat(
        inp.logits)
    s, bad_s = _finite(s_given)
    valid = torch.arange(length, device=q.device) < n  # (L,) real tokens, not padding
    bad_row = ~(torch.isfinite(q).all(-1) & torch.isfinite(g1) & torch.isfinite(gh)
                & torch.isfinite(g0))  # (R, L)
    bad_key = (bad_k.any(-1) | bad_v.any(-1) | bad_s) & valid
    qh, kh = _unit(q), _unit(k)
    if causal:
        out, end = _causal(st, qh, kh, v, s, (g1, gh, g0), n, chunk, return_state)
        poison = bad_row | (torch.cumsum(bad_key.to(torch.int32), dim=1) > 0)
    else:
        out, end = _bidirectional(qh, kh, v, s, (g1, gh, g0), n), None
        poison = bad_row | bad_key.any(dim=1, keepdim=True)
    out = torch.where(poison[..., None], torch.full_like(out, float("nan")), out)
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
    return torch.where(flags, torch.full_like(x, float("nan")), x)


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
    w = torch.exp(s - top)  # (R, N)
    rel = s - top
    mean_rel = rel.mean(dim=1, keepdim=True)  # sbar - s_ref
    keys = torch.cat([w[..., None] * kh, rel[..., None] * kh, kh], dim=-1)  # (R, N, 3D)
    sums = keys.transpose(1, 2) @ v  # (R, 3D, Dv): F, G', H
    a = gh / w.sum(dim=1, keepdim=True)
    b = (g1 - gh) / n
    c = (g0 - gh) / n - b * mean_rel
    query = torch.cat([a[..., None] * qh, b[..., None] * qh, c[..., None] * qh], dim=-1)
    return query @ sums


def _causal(st: State, qh: torch.Tensor, kh: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
            gates: tuple[torch.Tensor, ...], n: int, chunk: int,
            return_state: bool) -> tuple[torch.Tensor, State | None]:
    """Spec 4.2 for every chunk at once. Shapes: qh, kh (R, L, D); v (R, L, Dv); s and the
    gates (R, L); L = nc C >= n real tokens. Returns (R, L, Dv) and the state (rows R; the
    caller sets its length and key sum). The steps are functions of their own so that their
    temporaries are freed on return when no gradient is recorded."""
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
    rel = torch.where(valid, s - s_ref[:, None], torch.zeros_like(s))  # (R, L)
    t = st.length + torch.arange(1, length + 1, dtype=s.dtype, device=s.device)  # (L,)
    mean_rel = (st.length * st.mean_offset[:, None] + _prefix_sum(rel, chunk)) / t  # (R, L)
    # Step 6 for every chunk, then the states each chunk reads (step 5).
    before, last = _recomputed(_chunk_states, st, kh, v, s, rel, valid, m_prev, m_end, chunk)
    f_before, e_before, g_before, h_before = before
    # Steps 2-4: the chunk's own keys, C x C with each row's frame.
    decay = torch.exp(m_prev[..., None] - m_row)  # (R, nc, C) <= 1
    tc, mean_c = t.reshape(nc, chunk), mean_rel.reshape(rows, nc, chunk)
    qc, vc = qh.reshape(rows, nc, chunk, d), v.reshape(rows, nc, chunk, dv)
    kc, e_carried = kh.reshape(rows, nc, chunk, d), decay * e_before[..., None]
    s3, rel3 = s.reshape(rows, nc, chunk), rel.reshape(rows, nc, chunk)
    g3 = tuple(g.reshape(rows, nc, chunk) for g in gates)
    slab = SLAB if _recording(qc, kc, vc, s3, *g3) else nc  # all at once without autograd
    parts = [_recomputed(_within_chunks, qc[:, j:j + slab], kc[:, j:j + slab],
                         vc[:, j:j + slab], s3[:, j:j + slab], rel3[:, j:j + slab],
                         m_row[:, j:j + slab], e_carried[:, j:j + slab], mean_c[:, j:j + slab],
                         tuple(g[:, j:j + slab] for g in g3), tc[j:j + slab])
             for j in range(0, nc, slab)]
    out, a, b, c = (torch.cat(x, dim=1) for x in zip(*parts))
    # Step 5: earlier chunks through the state, coefficients moved to row t's frame.
    out = out + (a * decay)[..., None] * (qc @ f_before)
    out = out + b[..., None] * (qc @ g_before)
    out = out + (c - b * mean_c)[..., None] * (qc @ h_before)
    if not return_state:
        return out.reshape(rows, length, dv), None
    f_last, e_last, g_last, h_last = last
    m_last, mean_last = m_end[:, -1], mean_rel[:, n - 1]  # sbar - s_ref after the last token
    kv = torch.stack([f_last, g_last - mean_last[:, None, None] * h_last, h_last], dim=1)
    end = State(length=st.length, running_max=m_last, mean_offset=mean_last + s_ref - m_last,
                normaliser=e_last, kv=kv, key_sum=st.key_sum)
    return out.reshape(rows, length, dv), end


def _chunk_states(st: State, kh: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                  rel: torch.Tensor, valid: torch.Tensor, m_prev: torch.Tensor,
                  m_end: torch.Tensor, chunk: int) -> tuple[tuple, tuple]:
    """The sums every chunk reads (F relative to M_{c-1}, E, G' about s_ref, H), each
    (R, nc, D, Dv) or (R, nc) for E, and those after the last chunk (F, E, G', H)."""
    rows, length, d = kh.shape
    dv, nc = v.shape[-1], length // chunk
    # U_c = Kf^T V relative to M_c, features [w kh, (s - s_ref) kh, kh], one product each.
    w = torch.exp(torch.where(valid.reshape(nc, chunk), s.reshape(rows, nc, chunk)
                              - m_end[..., None], float("-inf"))).reshape(rows, length)
    kc_t = kh.reshape(rows, nc, chunk, d).transpose(-1, -2)  # (R, nc, D, C)
    update_f = kc_t @ (w[..., None] * v).reshape(rows, nc, chunk, dv)  # (R, nc, D, Dv)
    update_g = kc_t @ (rel[..., None] * v).reshape(rows, nc, chunk, dv)
    update_h = kc_t @ v.reshape(rows, nc, chunk, dv)
    # F and E decay with the running max; G' (about s_ref) and H are cumulative sums.
    f0, g_prev, h0 = st.kv[:, State.F], st.kv[:, State.G], st.kv[:, State.H]
    g0_ref = g_prev + st.mean_offset[:, None, None] * h0 if st.length else g_prev
    start = torch.cat([f0.reshape(rows, d * dv), st.normaliser[:, None]], dim=1)
    decayed = torch.cat([update_f.reshape(rows, nc, d * dv),
                         w.reshape(rows, nc, chunk).sum(dim=-1, keepdim=True)], dim=2)
    fe = _scan_decayed(decayed, m_prev, m_end, start)  # (R, nc, D Dv + 1) after each chunk
    fe_before = torch.cat([start[:, None], fe[:, :-1]], dim=1)
    g_before = torch.cumsum(update_g, dim=1) - update_g + g0_ref[:, None]  # exclusive sums
    h_before = torch.cumsum(update_h, dim=1) - update_h + h0[:, None]
    before = (fe_before[..., :-1].reshape(rows, nc, d, dv), fe_before[..., -1], g_before,
              h_before)
    last = (fe[:, -1, :-1].reshape(rows, d, dv), fe[:, -1, -1],
            g_before[:, -1] + update_g[:, -1], h_before[:, -1] + update_h[:, -1])
    return before, last


def _within_chunks(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, s: torch.Tensor,
                   rel: torch.Tensor, m_row: torch.Tensor, e_carried: torch.Tensor,
                   mean_c: torch.Tensor, gates: tuple[torch.Tensor, ...],
                   tc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Steps 2-4: ``W @ V`` of every chunk's own keys, and the row coefficients a, b, c.

    W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (s_i - sbar_t) + c_t) for i <= t, with
    a_t = gh_t / E_t, E_t the carried part `e_carried` plus the chunk's own exponentials.
    Shapes: qc, kc (R, nc, C, D); vc (R, nc, C, Dv); s, rel, m_row, e_carried, mean_c and the
    gates (R, nc, C); tc (nc, C).
    """
    g1, gh, g0 = gates
    chunk = qc.shape[2]
    index = torch.arange(chunk, device=s.device)
    visible = index[None, :] <= index[:, None]  # (C, C)
    gap = torch.where(visible, s[..., None, :] - m_row[..., None], float("-inf"))
    e = torch.exp(gap)  # (R, nc, C, C): exp(s_i - m_t), 0 above the diagonal
    del gap
    a = gh / (e_carried + e.sum(dim=-1))  # E_t >= 1
    b, c = (g1 - gh) / tc, (g0 - gh) / tc
    r = a[..., None] * e
    del e
    r = r + b[..., None] * (rel[..., None, :] - mean_c[..., None]) + c[..., None]
    weights = torch.where(visible, r * (qc @ kc.transpose(-1, -2)), torch.zeros_like(r))
    del r
    return weights @ vc, a, b, c
