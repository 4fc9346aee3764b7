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
   state: `where` selections and masks, never a branch on tensor data. Only what is small
   (logits, gates, peaks: (R, L)) is laid out in the chunk plan's slots for the whole call;
   the vectors stay per token, and a form lays out the run of tokens a slab holds (a view
   where it holds no padding) and writes its outputs back per token, so that a packed call
   makes no whole-call copy either (fresh memory of that size costs more than the copy: its
   pages are faulted in on every call).
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
A form reads `Chunks` and the `Sequences` (each sequence's initial `Sums`), and returns the
outputs of every token and, when asked, the `Sums` after each sequence's last chunk; both are
used by field name only. Shapes: R rows (the flattened leading axes), N tokens, nc chunks of
C slots laid out by the call's chunk plan (`plan`: a dense call's N tokens, then padding; a
packed call's sequences in chunks of their own), D and Dv. Two kinds of logit fix the frames:

- s_ref, the reference logit of a sequence: the running max m of its initial state when that
  holds tokens, else its first logit. Every row of the sequence sees it, so sums about it
  need no re-centring from chunk to chunk.
- M_c (R,), the running max of its sequence at the end of chunk c; M_{-1} = s_ref where a
  chunk starts a sequence.

`Chunks` (finite but for q, k, v and their peaks, which a form reads only through
`Chunks.vectors`; padding slots have s = rel = w = 0 and zero keys; a form returns its
outputs per token through `Chunks.tokens`):

    field     shape           holds                                  frame or reference
    t         (nc, C)         n_t, tokens up to row t, state's too   -
    q, k      (R, N, D)       the tokens' vectors as given           -
                              (`vectors`: in the slots, unit
                              directions, 0 if not finite)
    v         (R, N, Dv)      the tokens' values as given            -
                              (`vectors`: non-finite entries 0)
    token     (nc, C)         the token in each slot                 -
    place     (N,)            the slot of each token                 -
    q_peak,   (R, nc, C)      largest magnitude of q_t, k_t; NaN or  -
    k_peak                    inf where the vector is not finite
                              (and inf for padding keys)
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
    s_ref     (R, nc)         s_ref of the chunk's sequence          absolute
    segment   (nc,)           the sequence of each chunk             -
    start     (nc,)           the chunk starts its sequence          -
    end       (nc,)           the chunk ends its sequence            -
    bounds    nc + 1 ints     chunk c holds tokens bounds[c] ..      -
                              bounds[c + 1] - 1 (host)

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
from dataclasses import replace

import torch
import torch.utils.checkpoint

from zeros_ref.kernel import Inputs, State

from .bidirectional import bidirectional
from .logits import default_logits, key_sums
from .plan import ChunkPlan, counts, dense_plan, in_slots, packed_plan, per_chunk, segmented_scan
from .screen import Screened, screen
from .slab import Chunks, Sequences, Sums, slab

__all__ = ["SLAB", "SLAB_TRAINING", "Chunks", "Form", "Sequences", "Sums", "attention",
           "slabs", "state_from_sums", "sums_from_state"]

SLAB = 32
"""Chunks computed together by `slabs`, one step of its loop over the sequence, unless it is
given another number (the torch backend's `slab_size`, chosen per device: small enough for a
CPU's caches, large enough for few launches on a GPU)."""
SLAB_TRAINING = 16
"""At most this many when gradients are recorded: each slab is a checkpoint, recomputed in
backward."""


Form = Callable[[Chunks, Sequences], tuple[torch.Tensor, Sums | None]]
"""A chunked causal form: the outputs (R, N, Dv) of every token (`Chunks.tokens`) and, if
``sequences.finals``, the sums after each sequence's last chunk (leading axes (S, R), F and
E in the frame ``m_end`` of that chunk; zeros for an empty sequence, whose state the caller
keeps), from `Chunks` and `Sequences`. A chunk whose ``start`` is set begins from its
sequence's initial sums, any other from the chunk before it. The outputs are a fresh tensor
of the form's own (`attention` writes NaN into them in place). The default is `slabs`; a
backend with kernels of its own passes them to `attention`."""


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
        return torch.where(rows.reshape(*rows.shape, *([1] * (x.dim() - rows.dim()))),
                           math.nan, x)

    return State(length=state.length, running_max=nan(state.running_max),
                 mean_offset=nan(state.mean_offset), normaliser=nan(state.normaliser),
                 kv=nan(state.kv), key_sum=state.key_sum)


# -- the chunk form ----------------------------------------------------------------------------


def attention(inp: Inputs, state: State, *, causal: bool, chunk: int, return_state: bool,
              form: Form | None = None, slab_size: int = SLAB,
              plan: ChunkPlan | None = None) -> tuple[torch.Tensor, State | None]:
    """ZeroS attention of validated inputs, with the causal chunks computed by `form`.

    Parameters
    ----------
    inp : Inputs
        From `zeros_ref.kernel.check_call`: validated, broadcast to (*B, N, ...), in the
        compute dtype; ``inp.offsets`` set for a packed call (spec 5.2).
    state : State
        The state before the call, leading axes *B (empty unless one was given); for a
        packed call, one per sequence, leading axes (S, *B).
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
    plan : ChunkPlan or None
        The chunk plan of a packed call, made from its offsets (`plan.chunk_plan`); None
        makes it here from ``inp.offsets``. Unused for a dense call.

    Returns
    -------
    out : torch.Tensor
        (*B, N, Dv) in the input dtype.
    state : State or None
        The state after the call, leading axes *B (or (S, *B)), if `return_state`.
    """
    batch, n, d, dv = inp.batch, inp.n, inp.q.shape[-1], inp.v.shape[-1]
    rows, packed = math.prod(batch), inp.offsets is not None
    if n == 0:
        out = inp.v.new_zeros((*batch, 0, dv)).to(inp.dtype)
        return out, (state if return_state else None)
    if plan is None:
        plan = (packed_plan(inp.offsets, chunk, inp.q.device) if packed
                else dense_plan(n, chunk, inp.q.device))
    st = state.with_batch(torch, (plan.count, rows)) if packed else _one_sequence(state, rows)
    length = plan.chunks * chunk

    def grid(x: torch.Tensor) -> torch.Tensor:  # (R, L): per token to per slot
        x = x.reshape(rows, n)
        if x.stride(1) == 0:  # the same at every token (a gate given as a number)
            return x[:, :1].expand(rows, length)
        return in_slots(x, plan)

    # The vectors stay per token, as given (views): forms lay them out a slab at a time.
    q, k, v = inp.q.reshape(rows, n, d), inp.k.reshape(rows, n, d), inp.v.reshape(rows, n, dv)
    s = default_logits(k, st, causal, plan, slab_size) if inp.logits is None else grid(
        inp.logits)  # (R, L)
    # Non-finite values, once, whatever form computes the chunks (ZS-ERR-NONFINITE, -V).
    clean = screen(q, k, v, s, (grid(inp.first), grid(inp.higher), grid(inp.zero)), plan)
    bad = clean.bad_keys.reshape(rows, plan.chunks, chunk)
    within = torch.cumsum(bad.to(torch.int32), dim=-1) > 0  # (R, nc, C)
    spoilt = segmented_scan(within[..., -1], plan.start, torch.logical_or)  # (R, nc)
    end = None
    if causal:
        form = functools.partial(slabs, slab_size=slab_size) if form is None else form
        out, end = _causal(st, clean, plan, form, return_state)
        before = torch.cat([spoilt[:, :1] & False, spoilt[:, :-1]], dim=1) & ~plan.start
        reached = clean.bad_rows | (within | before[..., None]).reshape(rows, length)
        if end is not None:
            end = _spoilt(end, spoilt[:, plan.tail].T & plan.filled[:, None])
    else:
        out = bidirectional(clean, plan, slab_size)
        whole = spoilt[:, plan.tail][:, plan.segment]  # (R, nc): the chunk's sequence
        reached = clean.bad_rows | whole.repeat_interleave(chunk, dim=1)
    out = _poisoned(out, reached.index_select(1, plan.place))  # (R, N, Dv)
    out = out.reshape(*batch, n, dv).to(inp.dtype)
    if end is None:
        return out, None
    return out, (end.with_batch(torch, (plan.count, *batch)) if packed
                 else replace(end, length=end.length[0]).with_batch(torch, batch))


def _one_sequence(state: State, rows: int) -> State:
    """A dense call's state (*B) as the state of one sequence, leading axes (1, R)."""
    return replace(state.with_batch(torch, (1, rows)), length=(state.length,))


def _poisoned(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The outputs (R, N, Dv) with NaN in the rows `rows` (R, N) says: in place, on the
    form's fresh outputs, so that no second buffer of their size is made (its gradient is
    zero in those rows)."""
    return out.masked_fill_(rows[..., None], math.nan)


def _causal(st: State, clean: Screened, plan: ChunkPlan, form: Form,
            return_state: bool) -> tuple[torch.Tensor, State | None]:
    """Spec 4.2 for every chunk of every sequence: the frames and means of `Chunks`, then
    `form`.

    `st` holds the state before each sequence, leading axes (S, R); `clean` the screened
    inputs, the vectors per token (R, N, ...) (its raw keys also give the key sums), the rest
    laid out by `plan` (R, L). Returns the outputs (R, N, Dv) and, with `return_state`, the
    state after each sequence, leading axes (S, R) (the caller spoils it where a non-finite
    value was met; an empty sequence's is its initial state).
    """
    s = clean.s
    rows, length = s.shape
    chunk, nc = plan.chunk, plan.chunks
    valid = plan.valid.reshape(nc, chunk)  # real tokens, not padding
    held = torch.tensor(st.length, dtype=s.dtype, device=s.device)  # (S,) tokens of states
    # s_ref of each sequence, a logit every row of it sees: the state's running max, or
    # the sequence's first logit.
    first = s[:, plan.first] if plan.packed else s[:, :1]  # (R, S) (slices where dense,
    s_ref_seq = torch.where(held > 0, st.running_max.T, first)  # which compile better)
    s_ref = s_ref_seq[:, plan.segment] if plan.packed else s_ref_seq.expand(-1, nc)
    # Step 1: running maxima, per row (m_t) and at chunk ends (M_c), restarting with each
    # sequence at its s_ref; padding is below all.
    s_max = torch.where(valid, s.reshape(rows, nc, chunk), float("-inf"))
    tops = s_max.amax(dim=-1)  # (R, nc)
    m_end = segmented_scan(torch.where(plan.start, torch.maximum(s_ref, tops), tops),
                           plan.start, torch.maximum)
    m_prev = torch.where(plan.start, s_ref, torch.cat([s_ref[:, :1], m_end[:, :-1]], dim=1))
    m_row = torch.maximum(m_prev[..., None], torch.cummax(s_max, dim=-1).values)  # (R, nc, C)
    # Step 3 (mean): sbar_t - s_ref from a two-level prefix sum of s - s_ref (within the
    # chunk, then the chunks before it in its sequence).
    rel = torch.where(valid, s.reshape(rows, nc, chunk) - s_ref[..., None], 0.0)
    within = torch.cumsum(rel, dim=-1)
    totals = within[..., -1]
    before = segmented_scan(totals, plan.start, torch.add) - totals  # (R, nc), exclusive
    t = counts(st, plan, s.dtype)  # (nc, C)
    prior_sum = held * st.mean_offset.T  # (R, S): n sbar about s_ref
    mean_rel = (prior_sum[:, plan.segment, None] + before[..., None] + within) / t
    # Key weights relative to their chunk's end frame, exp(s_i - M_c) <= 1 (0 for padding).
    w = torch.exp(torch.where(valid, s.reshape(rows, nc, chunk) - m_end[..., None],
                              float("-inf")))  # (R, nc, C)

    def per_chunk(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(rows, nc, chunk)

    chunks = Chunks(t=t, q=clean.q, k=clean.k, v=clean.v, token=plan.token.reshape(nc, chunk),
                    place=plan.place, q_peak=per_chunk(clean.q_peak),
                    k_peak=per_chunk(clean.k_peak), s=per_chunk(s), rel=rel, w=w,
                    m_row=m_row, decay=torch.exp(m_prev[..., None] - m_row),
                    mean=mean_rel, first=per_chunk(clean.first),
                    higher=per_chunk(clean.higher), zero=per_chunk(clean.zero),
                    m_prev=m_prev, m_end=m_end, s_ref=s_ref, segment=plan.segment,
                    start=plan.start, end=plan.end, bounds=plan.bounds)
    fresh = not any(st.length)  # every sequence starts empty: its sums are zero
    sequences = Sequences(init=None if fresh else sums_from_state(st), count=plan.count,
                          finals=return_state)
    out, after = form(chunks, sequences)  # F in the frame M_{-1} = s_ref = m
    if not return_state:
        return out, None
    lengths = tuple(a + b for a, b in zip(st.length, plan.lengths, strict=True))
    end = state_from_sums(after, length=lengths, frame=m_end[:, plan.tail].T,
                          reference=s_ref_seq.T,
                          mean=mean_rel.reshape(rows, length)[:, plan.last].T,
                          key_sum=st.key_sum + key_sums(clean.k, plan))
    return out, _kept(end, st, plan.filled)


def _kept(end: State, start: State, filled: torch.Tensor) -> State:
    """`end` (leading axes (S, R)) with the `start` state of every sequence that is empty
    (`filled` (S,) False): its final state is its initial one."""

    def pick(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(filled.reshape(-1, *([1] * (new.dim() - 1))), new, old)

    return State(length=end.length, running_max=pick(end.running_max, start.running_max),
                 mean_offset=pick(end.mean_offset, start.mean_offset),
                 normaliser=pick(end.normaliser, start.normaliser), kv=pick(end.kv, start.kv),
                 key_sum=end.key_sum)


def slabs(chunks: Chunks, sequences: Sequences, *,
          slab_size: int = SLAB) -> tuple[torch.Tensor, Sums | None]:
    """The default `Form`: a slab of `slab_size` chunks at a time, every chunk of a slab at
    once (`slab.slab`), the sums carried from slab to slab.

    When autograd records, the slabs hold at most `SLAB_TRAINING` chunks and each is
    checkpointed: only its inputs are kept, its intermediates recomputed in the backward pass.

    Parameters
    ----------
    chunks : Chunks
        Every chunk of the call, (R, nc, C, ...).
    sequences : Sequences
        The sequences' initial sums, their number, and whether their final sums are wanted.
    slab_size : int
        Chunks per slab (the torch backend passes its `slab_size`).

    Returns
    -------
    out : torch.Tensor
        (R, N, Dv), the outputs of every token.
    finals : Sums or None
        The sums after each sequence's last chunk, leading axes (S, R), F and E in the frame
        of its ``m_end`` (zeros for an empty sequence); None unless ``sequences.finals``.
    """
    recording = torch.is_grad_enabled() and (
        any(x.requires_grad for x in chunks.by_name().values())
        or (sequences.init is not None
            and any(x.requires_grad for x in sequences.init.by_name().values())))
    size = min(slab_size, SLAB_TRAINING) if recording else slab_size
    rows, tokens, dv = chunks.v.shape
    d = chunks.q.shape[-1]
    out = chunks.v.new_empty((rows, tokens, dv))
    carry = Sums(f=out.new_zeros((rows, d, dv)), e=out.new_zeros((rows,)),
                 g=out.new_zeros((rows, d, dv)), h=out.new_zeros((rows, d, dv)))
    finals = carry.map(lambda x: x.new_zeros((sequences.count + 1, *x.shape)))
    # Each slab's output is copied into place at once (its tokens' run of the outputs), so
    # that its buffer is reused by the next slab rather than kept until the end (fresh
    # memory costs page faults).
    at = 0
    for piece in chunks.split(size):
        init = None if sequences.init is None else sequences.init.map(
            lambda x, seg=piece.segment: per_chunk(x, seg))  # (R, S, ...)
        if recording:  # recomputed in backward: only the slab's inputs are kept
            piece_out, after = torch.utils.checkpoint.checkpoint(slab, piece, carry, init,
                                                                 use_reentrant=False)
        else:
            piece_out, after = slab(piece, carry, init)
        held = piece.v.shape[1]
        out[:, at:at + held] = piece.tokens(piece_out)
        carry = after.map(lambda x: x[:, -1])
        if sequences.finals:  # the sums after each sequence's last chunk; others to slot S
            slot = torch.where(piece.end, piece.segment, sequences.count)
            for name, x in after.by_name().items():
                getattr(finals, name).index_copy_(0, slot, x.transpose(0, 1))
        at += held
    return out, (finals.map(lambda x: x[:-1]) if sequences.finals else None)
