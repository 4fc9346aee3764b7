"""The chunk form of ZeroS on torch tensors: every chunk at once, no host syncs.

It must equal the reference form, `zeros_ref.attention` (spec 4.2 causal, 4.3 bidirectional),
and computes the same sums with the same frames, arranged for a device that wants few large
operations and no data-dependent branches. `attention` does everything around the chunks of a
causal call and hands them to a `Form`, which computes their outputs:

1. **Non-finite values, once, before any form** (ZS-ERR-NONFINITE, -V; `screen`). The
   screening decides, with reductions over the whole call, which vectors, logits and gates
   are not finite: the logits and gates are replaced (their non-finite entries by zeros), and
   the peaks of q and k it takes mark the vectors that hold one. A form reads the vectors
   through `Chunks.vectors` (`screen.directions`): the unit directions of spec 2.1, a zero
   vector where the screening found a non-finite value, and the values with their non-finite
   entries zero, taken where the form needs them (a slab at a time in the default form, so
   that no copy of q, k or v the size of the call is made). Every form therefore computes on
   the same finite numbers; then the rows a non-finite value reaches (its own row for q and
   the gates, every later row for k, v and the logits) are set to NaN, as is a returned
   state: `where` selections and masks, never a branch on tensor data.
2. **Frames** (`_causal`). Row t keeps its own running max m_t (a `cummax`), so within a
   chunk the C x C weights ``exp(s_i - m_t)`` are exact for every row (spec 4.2, steps 1-4).
   Between chunks the sums after chunk c are kept relative to M_c, the running max at its end
   (a `cummax` over the chunk maxima); row t of chunk c reads them with
   ``exp(M_{c-1} - m_t) <= 1``.
3. **Scans.** The first-order sum is kept about s_ref, a logit every row of the call sees,
   which makes G' and H plain cumulative sums over the chunk updates. Only F and E decay,
   ``S_c = exp(M_{c-1} - M_c) S_{c-1} + U_c``.
4. **The form.** The default form is `slabs`: a slab of ``slab_size`` chunks at a time (the
   backend's choice; at most `SLAB_TRAINING` when autograd records, each slab checkpointed, its
   intermediates recomputed in the backward pass instead of kept), every chunk of a slab at
   once (`slab.slab`: a decay matrix with exponents <= 0 for F and E), between slabs a carry,
   so that the work is linear in N and the temporaries are a slab's. The Triton backend passes
   its kernels instead.

The seam: `Chunks` and `Sums`, their frames and reference logits
-----------------------------------------------------------------
A form reads `Chunks` and the `Sums` before the first chunk, and returns the outputs of every
chunk and the `Sums` after the last; both are used by field name only. Shapes: R rows (the
flattened leading axes), nc chunks of C tokens (the N real tokens, then padding), D and Dv.
Two kinds of logit fix the frames:

- s_ref (R,), the reference logit of the call: the running max m of the state when it holds
  tokens, else the call's first logit. Every row of the call sees it, so sums about it need
  no re-centring from chunk to chunk.
- M_c (R,), the running max at the end of chunk c; M_{-1} = s_ref.

`Chunks` (finite but for q, k, v and their peaks, which a form reads only through
`Chunks.vectors`; padding tokens have s = rel = w = 0 and zero vectors):

    field     shape           holds                                  frame or reference
    t         (nc, C)         n_t, tokens up to row t, state's too   -
    q, k      (R, nc, C, D)   the vectors as given (`vectors`: unit  -
                              directions, 0 if not finite)
    v         (R, nc, C, Dv)  the values as given (`vectors`:        -
                              non-finite entries 0)
    q_peak,   (R, nc, C)      largest magnitude of q_t, k_t; NaN or  -
    k_peak                    inf where the vector is not finite
    s         (R, nc, C)      the logits s_i                         absolute
    rel       (R, nc, C)      s_i - s_ref                            about s_ref
    w         (R, nc, C)      exp(s_i - M_c) <= 1, the key weight    frame M_c of its chunk
    m_row     (R, nc, C)      m_t, row t's running max               the frame of row t
    decay     (R, nc, C)      exp(M_{c-1} - m_t) <= 1                moves M_{c-1} to m_t
    mean      (R, nc, C)      sbar_t - s_ref, row t's mean logit     about s_ref
    first     (R, nc, C)      the gate g1_t                          -
    higher    (R, nc, C)      the gate gh_t                          -
    zero      (R, nc, C)      the gate g0_t                          -
    m_prev    (R, nc)         M_{c-1}                                frame of the sums c reads
    m_end     (R, nc)         M_c                                    frame of the sums after c

`Sums` (the sums of spec 4.1 over the tokens absorbed so far, each row its own):

    field     shape           holds                                  frame or reference
    f         (R, D, Dv)      F  = sum_i exp(s_i - M) kh_i v_i^T     frame M of the last chunk
    e         (R,)            E  = sum_i exp(s_i - M)                the same frame M
    g         (R, D, Dv)      G' = sum_i (s_i - s_ref) kh_i v_i^T    about s_ref, not sbar
    h         (R, D, Dv)      H  = sum_i kh_i v_i^T                  -

M is the running max at the end of the last chunk absorbed (M_{-1} = s_ref before the first).
The state of spec 5.1 (`zeros_ref.State`) keeps F and E in the frame of the running max m
(which is M after the last chunk, and s_ref = m at the start of a call from a state) and G
about the mean sbar: ``G = G' - (sbar - s_ref) H``. `sums_from_state` and `state_from_sums`
convert, by name, where a state crosses the call boundary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint

from zeros_ref.kernel import Inputs, State

from .screen import Screened, directions, screen
from .slab import Chunks, Sums, slab

__all__ = ["SLAB", "SLAB_TRAINING", "Chunks", "Form", "Sums", "attention", "slabs",
           "state_from_sums", "sums_from_state"]

SLAB = 32
"""Chunks computed together by `slabs`, one step of its loop over the sequence, unless it is
given another number (the torch backend's `slab_size`, chosen per device: small enough for a
CPU's caches, large enough for few launches on a GPU)."""
SLAB_TRAINING = 16
"""At most this many when gradients are recorded: each slab is a checkpoint, recomputed in
backward."""


Form = Callable[[Chunks, Sums], tuple[torch.Tensor, Sums]]
"""A chunked causal form: the outputs (R, nc, C, Dv) of every chunk and the sums after the
last, from `Chunks` and the sums before the first (in the frame M_{-1} = ``m_prev[:, 0]``).
The outputs are a fresh tensor of the form's own (`attention` writes NaN into them in place).
The default is `slabs`; a backend with kernels of its own passes them to `attention`."""


# -- the state of spec 5.1 ---------------------------------------------------------------------


def sums_from_state(state: State) -> Sums:
    """The `Sums` of a state of spec 5.1, before the first chunk of a call that continues it.

    Parameters
    ----------
    state : State
        A state of rows (R,): F, G, H in ``kv`` (R, 3, D, Dv), E, ``mean_offset`` = sbar - m
        and m (R,), of the compute dtype.

    Returns
    -------
    Sums
        F and E unchanged, in the frame of the state's running max m; G moved to the reference
        logit s_ref = m, ``G' = G + (sbar - m) H``; H unchanged. An empty state gives zeros,
        the sums of no token in any frame and about any reference.
    """
    h = state.kv[..., State.H, :, :]
    g = state.kv[..., State.G, :, :] + state.mean_offset[..., None, None] * h
    return Sums(f=state.kv[..., State.F, :, :], e=state.normaliser, g=g, h=h)


def state_from_sums(sums: Sums, *, length: int, frame: torch.Tensor, reference: torch.Tensor,
                    mean: torch.Tensor, key_sum: torch.Tensor) -> State:
    """The state of spec 5.1 from the `Sums` after the last token of a call.

    Parameters
    ----------
    sums : Sums
        F (R, D, Dv) and E (R,) in the frame `frame`, G' (R, D, Dv) about `reference`, H.
    length : int
        n, the tokens the sums hold.
    frame : torch.Tensor
        (R,), the frame of F and E: the running max m of those tokens.
    reference : torch.Tensor
        (R,), s_ref, the logit G' is taken about.
    mean : torch.Tensor
        (R,), sbar - s_ref, the mean logit of the tokens about the reference.
    key_sum : torch.Tensor
        (R, D), the sum of the raw keys (for the default logits).

    Returns
    -------
    State
        F and E as they are; ``G = G' - (sbar - s_ref) H`` about the mean; ``mean_offset =
        sbar - m``; all of the dtype of the sums.
    """
    slots = {State.F: sums.f, State.G: sums.g - mean[..., None, None] * sums.h,
             State.H: sums.h}
    kv = torch.stack([slots[slot] for slot in sorted(slots)], dim=-3)  # (R, 3, D, Dv)
    return State(length=length, running_max=frame, mean_offset=mean + reference - frame,
                 normaliser=sums.e, kv=kv, key_sum=key_sum)


def _spoilt(state: State, rows: torch.Tensor) -> State:
    """`state` with NaN in the rows `rows` (R,) of its running max, mean, E and sums: rows
    that have met a non-finite key, value or logit (the count and the key sum stay)."""

    def nan(x: torch.Tensor) -> torch.Tensor:
        return torch.where(rows.reshape(-1, *([1] * (x.dim() - 1))), math.nan, x)

    return State(length=state.length, running_max=nan(state.running_max),
                 mean_offset=nan(state.mean_offset), normaliser=nan(state.normaliser),
                 kv=nan(state.kv), key_sum=state.key_sum)


# -- the chunk form ----------------------------------------------------------------------------


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
    """ZeroS attention of validated inputs, with the causal chunks computed by `form`.

    Parameters
    ----------
    inp : Inputs
        From `zeros_ref.kernel.check_call`: validated, broadcast to (*B, N, ...), in the
        compute dtype.
    state : State
        The state before the call, leading axes *B (empty unless one was given).
    causal : bool
        Causal (spec 4.2) or bidirectional (spec 4.3).
    chunk : int
        The chunk length C.
    return_state : bool
        Whether to return the state after the call (causal only).
    form : Form or None
        What computes the causal chunks; None takes the default form, `slabs` with
        `slab_size` chunks a slab. Everything around it (frames, default logits, non-finite
        values, the state) is this module's.
    slab_size : int
        Chunks per slab of the default form, and of the default logits' key sums.

    Returns
    -------
    out : torch.Tensor
        (*B, N, Dv) in the input dtype.
    state : State or None
        The state after the call, leading axes *B, if `return_state`.
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

    q, k, v = flat(inp.q, d), flat(inp.k, d), flat(inp.v, dv)  # (R, L, D), (R, L, Dv)
    s = _default_logits(k, st, causal, chunk, slab_size) if inp.logits is None else flat(
        inp.logits)  # (R, L)
    # Non-finite values, once, whatever form computes the chunks (ZS-ERR-NONFINITE, -V).
    clean = screen(q, k, v, s, (flat(inp.first), flat(inp.higher), flat(inp.zero)))
    end = None
    if causal:
        form = functools.partial(slabs, slab_size=slab_size) if form is None else form
        out, end = _causal(st, clean, n, chunk, form, return_state)
        after_bad_key = torch.cumsum(clean.bad_keys.to(torch.int32), dim=1) > 0  # (R, L)
        reached = clean.bad_rows | after_bad_key
        if end is not None:
            end = _spoilt(end, clean.bad_keys.any(dim=1))
    else:
        out = _bidirectional(clean, n)
        reached = clean.bad_rows | clean.bad_keys.any(dim=1, keepdim=True)
    out = _poisoned(out, reached)
    out = out[:, :n].reshape(*batch, n, dv).to(inp.dtype)
    return out, (None if end is None else end.with_batch(torch, batch))


def _poisoned(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The outputs (R, L, Dv) with NaN in the rows `rows` (R, L) says: in place, on the
    form's fresh outputs, so that no second buffer of their size is made (its gradient is
    zero in those rows)."""
    return out.masked_fill_(rows[..., None], math.nan)


def _recomputed(step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)`; when gradients are recorded, its intermediates are recomputed in the
    backward pass instead of kept (activation checkpointing): training memory stays a small
    multiple of the inputs rather than of every temporary."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad
                                       for x in args):
        return torch.utils.checkpoint.checkpoint(step, *args, use_reentrant=False)
    return step(*args)


def _bidirectional(clean: Screened, n: int) -> torch.Tensor:
    """Spec 4.3: one whole-sequence state, read by every row with n = N. Returns (R, N, Dv)."""
    qh, kh, v = _recomputed(directions, clean.q, clean.k, clean.v, clean.q_peak, clean.k_peak)
    s = clean.s
    top = s.amax(dim=1, keepdim=True)  # (R, 1), also s_ref
    rel = s - top  # (R, N)
    w = torch.exp(rel)
    mean_rel = rel.mean(dim=1, keepdim=True)  # sbar - s_ref
    keys = torch.cat([w[..., None] * kh, rel[..., None] * kh, kh], dim=-1)  # (R, N, 3D)
    sums = keys.transpose(1, 2) @ v  # (R, 3D, Dv): F, G', H
    a = clean.higher / w.sum(dim=1, keepdim=True)
    b = (clean.first - clean.higher) / n
    c = (clean.zero - clean.higher) / n - b * mean_rel
    query = torch.cat([a[..., None] * qh, b[..., None] * qh, c[..., None] * qh], dim=-1)
    return query @ sums


def _causal(st: State, clean: Screened, n: int, chunk: int, form: Form,
            return_state: bool) -> tuple[torch.Tensor, State | None]:
    """Spec 4.2 for every chunk: the frames and means of `Chunks`, then `form`.

    `clean` holds the screened inputs (R, L, ...), L = nc C >= n real tokens (its raw keys
    also give the state's key sum). Returns the outputs (R, L, Dv) and, with
    `return_state`, the state after the call (rows R; the caller spoils it where a
    non-finite value was met).
    """
    s = clean.s
    rows, length = s.shape
    dv, nc = clean.v.shape[-1], length // chunk
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

    def per_chunk(x: torch.Tensor, *tail: int) -> torch.Tensor:
        return x.reshape(rows, nc, chunk, *tail)

    d = clean.q.shape[-1]
    chunks = Chunks(t=t.reshape(nc, chunk), q=per_chunk(clean.q, d), k=per_chunk(clean.k, d),
                    v=per_chunk(clean.v, dv), q_peak=per_chunk(clean.q_peak),
                    k_peak=per_chunk(clean.k_peak), s=per_chunk(s), rel=per_chunk(rel), w=w,
                    m_row=m_row, decay=torch.exp(m_prev[..., None] - m_row),
                    mean=per_chunk(mean_rel), first=per_chunk(clean.first),
                    higher=per_chunk(clean.higher), zero=per_chunk(clean.zero),
                    m_prev=m_prev, m_end=m_end)
    out, after = form(chunks, sums_from_state(st))  # F in the frame M_{-1} = s_ref = m
    out = out.reshape(rows, length, dv)
    if not return_state:
        return out, None
    end = state_from_sums(after, length=st.length + n, frame=m_end[:, -1], reference=s_ref,
                          mean=mean_rel[:, n - 1], key_sum=st.key_sum + clean.k.sum(dim=1))
    return out, end


def slabs(chunks: Chunks, sums: Sums, *, slab_size: int = SLAB) -> tuple[torch.Tensor, Sums]:
    """The default `Form`: a slab of `slab_size` chunks at a time, every chunk of a slab at
    once (`slab.slab`), the sums carried from slab to slab.

    When autograd records, the slabs hold at most `SLAB_TRAINING` chunks and each is
    checkpointed: only its inputs are kept, its intermediates recomputed in the backward pass.

    Parameters
    ----------
    chunks : Chunks
        Every chunk of the call, (R, nc, C, ...).
    sums : Sums
        The sums before the first chunk, F and E in the frame ``chunks.m_prev[:, 0]``.
    slab_size : int
        Chunks per slab (the torch backend passes its `slab_size`).

    Returns
    -------
    out : torch.Tensor
        (R, nc, C, Dv), the outputs of every chunk.
    sums : Sums
        The sums after the last chunk, F and E in the frame ``chunks.m_end[:, -1]``.
    """
    recording = torch.is_grad_enabled() and any(x.requires_grad
                                                for x in chunks.by_name().values())
    size = min(slab_size, SLAB_TRAINING) if recording else slab_size
    rows, nc, chunk, dv = chunks.v.shape
    out = chunks.v.new_empty((rows, nc, chunk, dv))
    # Each slab's output is copied into place at once, so that its buffer is reused by the
    # next slab rather than kept until the end (fresh memory costs page faults).
    start = 0
    for piece in chunks.split(size):
        if recording:  # recomputed in backward: only the slab's inputs are kept
            piece_out, sums = torch.utils.checkpoint.checkpoint(slab, piece, sums,
                                                                use_reentrant=False)
        else:
            piece_out, sums = slab(piece, sums)
        out[:, start:start + piece_out.shape[1]] = piece_out
        start += piece_out.shape[1]
    return out, sums
