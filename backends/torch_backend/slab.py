"""One slab of chunks of the chunk-parallel torch form (`chunked`): spec 4.2 steps 2-6
for S consecutive chunks at once, given the sums before the slab.

Shapes: R rows, S chunks of C tokens, D and Dv. Everything here is a product or an
elementwise operation on tensors of one slab, so its temporaries stay small (a few MiB) and
are reused by the allocator from slab to slab.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Chunks", "Sums", "broken", "directions", "peak", "slab"]


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



def peak(x: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of every vector along the last axis, (...,): NaN or inf exactly
    where the vector holds a non-finite value. Outside autograd (unit directions do not
    depend on it: x / |x| is the same whatever x is first divided by)."""
    x = x.detach()
    return torch.maximum(x.amax(dim=-1), x.amin(dim=-1).neg_())  # two reads, no temporary


def broken(peak: torch.Tensor) -> torch.Tensor:
    """Which vectors hold a non-finite value, from their peaks: NaN or inf (two operations,
    where `torch.isfinite` takes five)."""
    return ~(peak < math.inf)


def directions(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_peak: torch.Tensor,
               k_peak: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Unit directions of q and k and the values, from raw vectors (..., D) / (..., Dv) and
    the largest magnitudes (...,) of q and k (`peak`).

    Keys that hold a non-finite entry become zero vectors, and so do the non-finite entries
    of the values (keys and values reach later rows through sums, which the caller sets to
    NaN instead); a non-finite query stays (it reaches its own row only). Each vector is
    divided by its largest magnitude before its norm is taken, so the direction is exact for
    any finite scale.
    """
    return _unit(q, q_peak), _unit(k, k_peak, clean=True), torch.nan_to_num(v, 0.0, 0.0, 0.0)


def _unit(x: torch.Tensor, peak: torch.Tensor, *, clean: bool = False) -> torch.Tensor:
    """Unit vectors along the last axis, zero for zero vectors, and with `clean` for vectors
    holding a non-finite value (their peak is NaN or inf: x / peak is NaN or 0 throughout).
    Zeros and NaN are written in place, never selected with a broadcast mask (on a CPU such a
    selection costs six multiplications)."""
    y = x / torch.where(peak == 0, 1.0, peak)[..., None]
    recording = torch.is_grad_enabled() and x.requires_grad
    if clean:
        y = y.nan_to_num(0.0, 0.0, 0.0) if recording else y.nan_to_num_(0.0, 0.0, 0.0)
    norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    norm = torch.where(norm > 0, norm, 1.0)
    return y / norm if recording else y.div_(norm)


def slab(chunks: Chunks, sums: Sums, screen: tuple[torch.Tensor, ...] | None = None
         ) -> tuple[torch.Tensor, Sums, torch.Tensor | None]:
    """Outputs (R, S, C, Dv) of a slab of S chunks, and the sums after it.

    Step 6 for every chunk of the slab: U_c = K_c^T [w v, (s - s_ref) v, v] (F relative to
    M_c). The sums chunk c reads are those before it: F and E in the frame M_{c-1},
    ``sum_{j<c} exp(M_j - M_{c-1}) U_j`` plus the carry moved from the frame before the slab,
    one product with a decay matrix whose exponents are all <= 0; G' and H, plain sums over
    j < c. Then steps 2-5 (`_chunk_outputs`).

    `chunks` holds unit directions and finite values, in any strides. With `screen` =
    (rows whose gates are not finite, keys whose logit is not finite, both (R, S, C); rows
    (R,) that met a non-finite key, value or logit before the slab), it holds the raw vectors
    instead: the slab takes their directions, sets every row a non-finite input reaches to
    NaN, and returns the rows that have met one by its end (else None).
    """
    (tc, qc, kc, vc, s, rel, w, m_row, decay, mean_c, g1, gh, g0, m_prev, m_end) = chunks
    f0, e0, g_start, h_start = sums
    if screen is None:  # one contiguous copy: the products below then make no hidden ones
        qc, kc, vc = qc.contiguous(), kc.contiguous(), vc.contiguous()
        seen = None
    else:
        bad_gate, bad_s, seen = screen
        peaks = peak(qc), peak(kc), peak(vc)  # (R, S, C)
        bad_key = broken(torch.maximum(peaks[1], peaks[2])) | bad_s  # maximum keeps NaN
        reached = (torch.cumsum(bad_key.flatten(1).to(torch.int32), dim=1) > 0).reshape(
            bad_key.shape) | seen[:, None, None]
        # A NaN zero gate makes c_t NaN, and with it the whole output row (`_chunk_outputs`).
        g0 = torch.where(reached | bad_gate | broken(peaks[0]), math.nan, g0)
        seen = reached[:, -1, -1]
        qc, kc, vc = directions(qc, kc, vc, peaks[0], peaks[1])
    rows, count, chunk, d = kc.shape
    dv = vc.shape[-1]
    # Every chunk of the slab in one batch of B = R S matrices, views of contiguous memory:
    # the updates K_c^T [w v, (s - s_ref) v, v], (R, S, D Dv) each.
    keys = kc.reshape(-1, chunk, d).transpose(1, 2)  # (B, D, C)
    update_f, update_g, update_h = (
        torch.bmm(keys, x.reshape(-1, chunk, dv)).view(rows, count, d * dv)
        for x in (w[..., None] * vc, rel[..., None] * vc, vc))
    index = torch.arange(count, device=w.device)
    strict = index[None, :] < index[:, None]  # (S, S): chunk j feeds chunk c > j
    gaps = torch.where(strict, m_end[..., None, :] - m_prev[..., :, None], float("-inf"))
    decays = torch.exp(gaps)  # (R, S, S): exp(M_j - M_{c-1}) <= 1
    moved = torch.exp(m_prev[:, :1] - m_prev)  # (R, S): the carry into frame M_{c-1}
    w_sum = w.sum(dim=-1)  # (R, S)
    f_before = torch.bmm(decays, update_f).addcmul_(moved[..., None],
                                                    f0.reshape(rows, 1, d * dv))
    e_before = torch.bmm(decays, w_sum[..., None])[..., 0] + moved * e0[:, None]
    ones = strict.to(w.dtype).expand(rows, -1, -1)
    g_before, h_before = (torch.bmm(ones, x).add_(start.reshape(rows, 1, d * dv))
                          for x, start in ((update_g, g_start), (update_h, h_start)))
    # The sums after the slab, in the frame of its last chunk, M_{S-1}.
    last = torch.exp(m_end - m_end[:, -1:])[:, None, :]  # (R, 1, S)
    move_last = torch.exp(m_prev[:, 0] - m_end[:, -1])  # (R,)
    f_last = torch.bmm(last, update_f)[:, 0] + move_last[:, None] * f0.reshape(rows, d * dv)
    e_last = (last[:, 0] * w_sum).sum(dim=-1) + move_last * e0
    g_last, h_last = (start + x.sum(dim=1).view(rows, d, dv)
                      for x, start in ((update_g, g_start), (update_h, h_start)))
    out = _chunk_outputs(qc, keys, vc, tc, s, rel, m_row, decay, mean_c, g1, gh, g0, e_before,
                         f_before, g_before, h_before)
    after = Sums(f_last.reshape(rows, d, dv), e_last, g_last, h_last)
    return out, after, seen


def _chunk_outputs(qc: torch.Tensor, keys: torch.Tensor, vc: torch.Tensor,
                   tc: torch.Tensor, s: torch.Tensor, rel: torch.Tensor, m_row: torch.Tensor,
                   decay: torch.Tensor, mean_c: torch.Tensor, g1: torch.Tensor,
                   gh: torch.Tensor, g0: torch.Tensor, e_before: torch.Tensor,
                   f_before: torch.Tensor, g_before: torch.Tensor,
                   h_before: torch.Tensor) -> torch.Tensor:
    """Steps 2-5 of a slab of S chunks: outputs (R, S, C, Dv).

    Within the chunk, W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (s_i - sbar_t) + c_t) for
    i <= t, with a_t = gh_t / E_t and E_t the carried normaliser (moved to row t's frame by
    `decay`) plus the chunk's own exponentials. With the chunks before (F, G', H) the output is

        sum_i W[t, i] v_i + a_t decay_t qh_t F + b_t qh_t G' + (c_t - b_t (sbar_t - s_ref)) qh_t H,

    with W written as cos (a_t exp(s_i - m_t) + b_t (s_i - s_ref) + c_t - b_t (sbar_t - s_ref)):
    one product with the chunk's C x C matrix and three with the sums. A NaN gate makes its
    row NaN throughout. Shapes: qc (R, S, C, D) and vc (R, S, C, Dv), contiguous; keys
    (R S, D, C), the transposed keys of every chunk; the counts tc (S, C); s, rel = s - s_ref,
    m_row, decay, mean_c and the gates (R, S, C), in any strides; e_before (R, S); f_before,
    g_before (G') and h_before (R, S, D Dv).
    """
    rows, count, chunk, d = qc.shape
    dv = vc.shape[-1]
    q3 = qc.reshape(-1, chunk, d)
    cos = torch.bmm(q3, keys).tril_().view(rows, count, chunk, chunk)  # zero above the diagonal
    # exp(s_i - m_t) <= 1 for i <= t. Exponents below log(tiny) + 1 are raised to it (the
    # weight changes by less than 3 times the smallest normal number, against E_t >= 1), and
    # so are those above the diagonal (clamped to [floor, floor]), which meet a zero cosine:
    # exp then never makes a subnormal number or reads -inf, both of which are a hundred
    # times slower on a CPU.
    floor = math.log(torch.finfo(s.dtype).tiny) + 1.0
    index = torch.arange(chunk, device=s.device)
    lowest = torch.full((chunk, chunk), floor, dtype=s.dtype, device=s.device)
    highest = lowest.where(index[None, :] > index[:, None], 0.0)  # (C, C)
    e = (s[..., None, :] - m_row[..., None]).clamp_(min=lowest, max=highest).exp_()
    a = gh / (decay * e_before[..., None] + e.sum(dim=-1))  # gh / E_t, E_t >= 1
    b = (g1 - gh) / tc
    c = (g0 - gh) / tc - b * mean_c
    weights = torch.addcmul(c[..., None], a[..., None], e)  # (R, S, C, C): a e + c
    weights = weights.addcmul_(b[..., None], rel[..., None, :]).mul_(cos)  # + b rel, times cos
    out = torch.bmm(weights.view(-1, chunk, chunk), vc.reshape(-1, chunk, dv))
    for scale, before in ((a * decay, f_before), (b, g_before), (c, h_before)):
        out = out.baddbmm_((scale[..., None] * qc).reshape(-1, chunk, d), before.view(-1, d, dv))
    return out.view(rows, count, chunk, dv)
