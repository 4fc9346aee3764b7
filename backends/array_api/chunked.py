"""The chunk-parallel form of ZeroS in array-API calls: every chunk of a slab at once, slabs in
a scan, no host sync.

It must equal the reference form, `zeros_ref.attention` (spec 4.2 causal, 4.3
bidirectional), and has the structure of the torch form (`zeros_backends.torch_backend.
chunked`, whose docstring derives the frames), written for any array library:

- **functional**: no array is written in place;
- **branch-free**: no Python branch reads an array value; non-finite inputs are screened with
  `where` selections (`screen`) and the rows they reach set to NaN the same way;
- **static shapes**: every shape follows from the inputs' shapes and the chunk plan's, so
  ``jax.jit`` traces the form once per shape, and on a GPU (CuPy) nothing waits for the host.

The steps, on the tokens laid out by the chunk plan (`plan`: nc chunks of C slots, chunk
first, (nc, R, C, ...)):

1. **Frames.** Row t keeps its own running max m_t (`scans.cumulative_max` within the chunk,
   from M_{c-1}); the sums after chunk c are kept relative to M_c, the running max of its
   sequence at its end (a segmented scan of the chunk maxima). Every exponent is <= 0.
2. **Means.** sbar_t - s_ref from a two-level prefix sum of s - s_ref (within the chunk, then
   the chunks before it in its sequence), s_ref being a logit every row of the sequence sees
   (the initial state's running max, or the sequence's first logit).
3. **Slabs.** `slab.step` computes S chunks at once from the sums carried into the slab; a
   `Scan` threads the carry from slab to slab (a Python loop, or ``jax.lax.scan``). The
   vectors q, k, v reach the step as given, laid out chunk first: their directions, their
   screening and the rows their non-finite values reach are computed there, a slab at a
   time (default logits too, by a scan of their own, `logits`), so that no pass over the
   whole call's vectors is made besides their layout.
4. **Bidirectional** (spec 4.3): the same step with every frame at its sequence's maximum
   accumulates each sequence's whole sums; every query then reads its sequence's.

Shapes: R rows (the flattened leading axes), nc chunks of C slots, S sequences, D and Dv.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, NamedTuple

from zeros_ref.kernel import State

from .logits import default_logits
from .plan import Plan
from .scans import Scan, cumulative_max, exclusive, loop, segmented_scan
from .screen import Exact, direction, finite
from .slab import Carry, Marks, Slab, Sums, step

__all__ = ["Result", "attention"]


class Result(NamedTuple):
    """What `attention` returns.

    out : (*B, N, Dv) in the compute dtype.
    state : the state after each sequence, leading axes (S, *B), its `length` 0 (the caller
        keeps the counts on the host); None unless asked for (causal calls).
    overflow : 0-d bool, True where finite keys gave default logits that are not finite
        (spec 8: the caller raises, `zeros_ref.kernel.check_default_logits`'s error).
    """

    out: Any
    state: State | None
    overflow: Any


def attention(xp: Any, q: Any, k: Any, v: Any, logits: Any, gates: tuple[Any, Any, Any],
              state: State, counts: Any, plan: Plan, *, causal: bool, return_state: bool,
              gather: bool, slab: int, scan: Scan | None = None, depth: Any = None,
              exact: Exact | None = None) -> Result:
    """ZeroS attention of validated inputs, every chunk in array-API calls.

    Parameters
    ----------
    xp : the array namespace of the inputs.
    q, k : (*B, N, D) arrays, N >= 1, of the compute dtype (finite or not).
    v : (*B, N, Dv) array.
    logits : (*B, N) array, or None for the default logits (ZS-LOG-DEFAULT).
    gates : g1, gh, g0, each (*B, N) (broadcast).
    state : State
        The state before each sequence, leading axes (S, *B); its `length` is not read.
    counts : (S,) integer array, the tokens each initial state holds.
    plan : Plan
        The chunk plan of the call's sequences (`plan.plan`), nc a multiple of `slab`.
    causal : spec 4.2 or 4.3.
    return_state : return the state after each sequence (causal only).
    gather : the tokens reach their slots by the plan's ``token`` indices and return by its
        ``place`` (a packed call, or one padded to a bucket); else the plan is one sequence of
        the N tokens of each row, then padding.
    slab : chunks a slab (the step of the scan).
    scan : the `Scan` over slabs; None for a Python loop.
    depth : D of the default logits' 1/sqrt(D), a 0-d array, where q and k are zero-padded
        along D (so that a compiled form does not depend on it); None: their last axis.
    exact : for a library whose arithmetic reads subnormal numbers as zero (XLA's CPU code),
        its `screen.Exact`: directions of tiny vectors, and values lifted by a power of two
        per row, from the bits. None: plain arithmetic.
    """
    scan = loop(xp) if scan is None else scan
    batch, n, dv = tuple(q.shape[:-2]), q.shape[-2], v.shape[-1]
    rows = math.prod(batch)
    nc, chunk = plan.position.shape
    dtype = q.dtype

    def flat(x: Any) -> Any:  # (*B, N, ...) -> (R, N, ...)
        tail = tuple(x.shape[len(batch) + 1:])
        return xp.reshape(xp.broadcast_to(x, (*batch, n, *tail)), (rows, n, *tail))

    def grid(x: Any) -> Any:  # (*B, N, ...) -> (nc, R, C, ...), chunk first
        x = flat(x)
        tail = tuple(x.shape[2:])
        if gather:
            x = xp.take(x, plan.token, axis=1)
        elif nc * chunk > n:
            pad = xp.zeros((rows, nc * chunk - n, *tail), dtype=x.dtype)
            x = xp.concat([x, pad], axis=1)
        x = xp.reshape(x, (rows, nc, chunk, *tail))
        return xp.permute_dims(x, (1, 0, 2, *range(3, x.ndim)))

    st = _batched(xp, state, (state.kv.shape[0], rows))
    power = None if exact is None else exact.lift(flat(v), st.kv)  # (R,)
    valid = plan.valid[:, None, :]  # (nc, 1, C)
    kg = grid(k)
    held = xp.astype(counts, dtype)  # (S,) tokens of the initial states
    if logits is None:
        depth = xp.asarray(float(k.shape[-1])) if depth is None else depth
        s = default_logits(xp, kg, st, plan, held, causal=causal, depth=depth, slab=slab,
                           scan=scan)
    else:
        s = grid(logits)
    unread = ~xp.isfinite(s) & valid
    s, bad_s = finite(xp, s)
    (g1, bad_1), (gh, bad_h), (g0, bad_0) = (finite(xp, grid(g)) for g in gates)
    fields = {"q": grid(q), "k": kg, "v": grid(v), "first": g1, "higher": gh, "zero": g0,
              "bad_row": bad_1 | bad_h | bad_0, "bad_logit": bad_s, "valid": plan.valid,
              "start": plan.start, "segment": plan.segment}
    run = {"slab": slab, "scan": scan, "exact": exact, "power": power}
    if causal:
        out, end, marks = _causal(xp, fields, s, st, plan, held, finals=return_state, **run)
    else:
        out, marks = _bidirectional(xp, fields, s, plan, **run)
        end = None
    overflow = xp.asarray(False)
    if logits is None:  # default logits past the range, of finite keys (spec 8)
        overflow = xp.any(unread) & ~xp.any(marks.nonfinite_key) \
            & xp.all(xp.isfinite(st.key_sum))
    out = xp.reshape(xp.permute_dims(out, (1, 0, 2, 3)), (rows, nc * chunk, dv))
    out = xp.take(out, plan.place, axis=1) if gather else out[:, :n, :]
    out = xp.reshape(out, (*batch, n, dv))
    if end is not None:
        end = _batched(xp, end, (end.kv.shape[0], *batch))
    return Result(out=out, state=end, overflow=overflow)


def _batched(xp: Any, state: State, batch: tuple[int, ...]) -> State:
    """`state` with its leading axes reshaped to `batch` (its `length` is not read)."""
    return replace(state, length=0).with_batch(xp, batch)


def _rows(power: Any, ndim: int) -> Any:
    """The powers of two of the rows (R,) against arrays (S, R, ...) of `ndim` axes."""
    return power[(None, slice(None), *([None] * (ndim - 2)))]


def _counts(xp: Any, plan: Plan, held: Any) -> Any:
    """n_t (nc, C): the tokens of its sequence up to each slot, its initial state's too."""
    return xp.take(held, plan.segment, axis=0)[:, None] + xp.astype(plan.position,
                                                                      held.dtype) + 1.0


def _causal(xp: Any, fields: dict[str, Any], s: Any, st: State, plan: Plan, held: Any, *,
            finals: bool, slab: int, scan: Scan, exact: Exact | None,
            power: Any) -> tuple[Any, State | None, Marks]:
    """Spec 4.2 for every chunk of every sequence: frames and means, then the slabs.

    Returns the outputs (nc, R, C, Dv), with `finals` the state after each sequence (leading
    axes (S, R), its `length` 0; an empty sequence's is its initial state, else None), and
    the slabs' `Marks`."""
    valid = plan.valid[:, None, :]
    start = plan.start[:, None]  # (nc, 1)
    # s_ref of each sequence: the state's running max, or the sequence's first logit.
    rows = s.shape[1]
    flat = xp.reshape(xp.permute_dims(s, (1, 0, 2)), (rows, -1))  # (R, nc C)
    first = xp.permute_dims(xp.take(flat, plan.first, axis=1), (1, 0))  # (S, R)
    s_ref_seq = xp.where(held[:, None] > 0, st.running_max, first)
    s_ref = xp.take(s_ref_seq, plan.segment, axis=0)  # (nc, R)
    # Step 1: running maxima, per row (m_t) and at chunk ends (M_c).
    s_max = xp.where(valid, s, -xp.inf)
    tops = xp.max(s_max, axis=-1)  # (nc, R)
    m_end = segmented_scan(xp, xp.where(start, xp.maximum(s_ref, tops), tops), plan.start,
                           xp.maximum)
    m_prev = xp.where(start, s_ref, xp.concat([s_ref[:1, ...], m_end[:-1, ...]], axis=0))
    m_row = xp.maximum(m_prev[..., None], cumulative_max(xp, s_max))  # (nc, R, C)
    # Step 3 (mean): sbar_t - s_ref, within the chunk then the chunks before it.
    rel = xp.where(valid, s - s_ref[..., None], 0.0)
    within = xp.cumulative_sum(rel, axis=-1)
    before = exclusive(xp, segmented_scan(xp, within[..., -1], plan.start, xp.add),
                       plan.start)
    t = _counts(xp, plan, held)  # (nc, C)
    prior = xp.take(held[:, None] * st.mean_offset, plan.segment, axis=0)  # n sbar, about s_ref
    mean = (prior[..., None] + before[..., None] + within) / t[:, None, :]
    w = xp.exp(xp.where(valid, s - m_end[..., None], -xp.inf))
    x = Slab(**fields, s=s, rel=rel, w=w, m_row=m_row, decay=xp.exp(m_prev[..., None] - m_row),
             mean=mean, m_prev=m_prev, m_end=m_end, s_ref=s_ref, t=t)
    lifted = st if power is None else replace(st, kv=exact.raised(st.kv, _rows(power, 5)))
    init = _sums_from_state(xp, lifted)  # zeros for an empty state
    out, sums, marks = _run_slabs(xp, x, init, plan, outputs=True, finals=finals, slab=slab,
                                  scan=scan, exact=exact, power=power)
    if not finals:
        return out, None, marks
    keys = segmented_scan(xp, marks.keys, plan.start, xp.add)  # (nc, R, D)
    end = _state_from_sums(
        xp, sums, length=0,
        frame=xp.take(m_end, plan.tail, axis=0), reference=s_ref_seq,
        mean=xp.permute_dims(xp.take(xp.reshape(xp.permute_dims(mean, (1, 0, 2)),
                                                (rows, -1)), plan.last, axis=1), (1, 0)),
        key_sum=st.key_sum + xp.take(keys, plan.tail, axis=0))
    if power is not None:
        end = replace(end, kv=exact.lowered(end.kv, _rows(power, 5), exact=True))
    end = _kept(xp, end, st, plan.filled)
    met = xp.take(marks.spoilt, plan.tail, axis=0) & plan.filled[:, None]  # (S, R)
    return out, _spoilt(xp, end, met), marks


def _lengths(xp: Any, plan: Plan) -> Any:
    """The tokens of each sequence (S,), from the plan."""
    per_chunk = xp.sum(xp.astype(plan.valid, xp.int32), axis=-1)  # (nc,)
    totals = segmented_scan(xp, per_chunk, plan.start, xp.add)
    return xp.where(plan.filled, xp.take(totals, plan.tail, axis=0), 0)


def _run_slabs(xp: Any, fields: Slab, init: Sums | None, plan: Plan, *, outputs: bool,
               finals: bool, slab: int, scan: Scan, exact: Exact | None,
               power: Any) -> tuple[Any, Any, Marks]:
    """`slab.step` over the slabs of `fields` (nc, ...), threaded by `scan`.

    Returns the outputs (nc, R, C, Dv) (None without `outputs`), with `finals` the sums after
    each sequence's last chunk, leading axes (S, R) (for one sequence, the last carry; for
    several, the sums after every chunk are kept and taken at each sequence's tail), and
    the slabs' `Marks` (nc, ...)."""
    rows = fields.q.shape[1]
    d, dv = fields.q.shape[-1], fields.v.shape[-1]
    keep = finals and plan.first.shape[0] > 1
    zeros = xp.zeros((rows, d, dv), dtype=fields.s.dtype)
    carry = Carry(Sums(f=zeros, e=xp.zeros((rows,), dtype=fields.s.dtype), g=zeros, h=zeros),
                  spoilt=xp.zeros((rows,), dtype=xp.bool))

    def body(carry: Carry, x: Slab) -> tuple[Carry, tuple[Any, Any, Marks]]:
        carry, out, after, marks = step(xp, carry, x, init, outputs=outputs, exact=exact,
                                        power=power)
        return carry, (out, after if keep else None, marks)

    xs = Slab(*(xp.reshape(x, (x.shape[0] // slab, slab, *x.shape[1:])) for x in fields))
    carry, (outs, afters, marks) = scan(body, carry, xs)

    def joined(x: Any) -> Any:  # (slabs, S, ...) -> (nc, ...)
        return xp.reshape(x, (-1, *x.shape[2:]))

    marks = Marks(*(joined(x) for x in marks))
    whole = None if outs is None else joined(outs)
    if not finals:
        return whole, None, marks
    if keep:
        sums = Sums(*(xp.take(joined(a), plan.tail, axis=0) for a in afters))
    else:
        sums = Sums(*(a[None, ...] for a in carry.sums))
    return whole, sums, marks


def _sums_from_state(xp: Any, st: State) -> Sums:
    """The sums before each sequence from its state (S, R, ...): F and E in the frame of the
    state's running max m (= s_ref), G moved to s_ref, ``G' = G + (sbar - m) H``."""
    h = st.kv[..., State.H, :, :]
    g = st.kv[..., State.G, :, :] + st.mean_offset[..., None, None] * h
    return Sums(f=st.kv[..., State.F, :, :], e=st.normaliser, g=g, h=h)


def _state_from_sums(xp: Any, sums: Sums, *, length: int, frame: Any, reference: Any,
                     mean: Any, key_sum: Any) -> State:
    """The state of spec 5.1 from the sums after each sequence (S, R, ...): F and E in the
    frame `frame` (the running max), ``G = G' - (sbar - s_ref) H``, ``mean_offset = sbar -
    m``; `mean` is sbar - s_ref (S, R), `reference` s_ref (S, R)."""
    slots = {State.F: sums.f, State.G: sums.g - mean[..., None, None] * sums.h,
             State.H: sums.h}
    kv = xp.stack([slots[slot] for slot in sorted(slots)], axis=-3)  # (S, R, 3, D, Dv)
    return State(length=length, running_max=frame, mean_offset=mean + reference - frame,
                 normaliser=sums.e, kv=kv, key_sum=key_sum)


def _kept(xp: Any, end: State, start: State, filled: Any) -> State:
    """`end` with the `start` state of every empty sequence (`filled` (S,) False)."""

    def pick(new: Any, old: Any) -> Any:
        return xp.where(xp.reshape(filled, (-1, *([1] * (new.ndim - 1)))), new, old)

    return State(length=end.length, running_max=pick(end.running_max, start.running_max),
                 mean_offset=pick(end.mean_offset, start.mean_offset),
                 normaliser=pick(end.normaliser, start.normaliser), kv=pick(end.kv, start.kv),
                 key_sum=pick(end.key_sum, start.key_sum))


def _spoilt(xp: Any, state: State, rows: Any) -> State:
    """`state` (S, R, ...) with NaN in the rows `rows` (S, R) of its running max, mean, E and
    sums: sequences that met a non-finite key, value or logit."""

    def nan(x: Any) -> Any:
        return xp.where(xp.reshape(rows, (*rows.shape, *([1] * (x.ndim - 2)))), xp.nan, x)

    return State(length=state.length, running_max=nan(state.running_max),
                 mean_offset=nan(state.mean_offset), normaliser=nan(state.normaliser),
                 kv=nan(state.kv), key_sum=state.key_sum)


def _bidirectional(xp: Any, fields: dict[str, Any], s: Any, plan: Plan, *, slab: int,
                   scan: Scan, exact: Exact | None, power: Any) -> tuple[Any, Marks]:
    """Spec 4.3 for every sequence: its whole sums, in the frame of its largest logit (which
    is also its s_ref), read by every row of it with t = n (a second scan). Returns the
    outputs (nc, R, C, Dv) and the first scan's `Marks`."""
    valid = plan.valid[:, None, :]
    tops = xp.max(xp.where(valid, s, -xp.inf), axis=-1)  # (nc, R)
    top = segmented_scan(xp, tops, plan.start, xp.maximum)
    top = xp.take(xp.take(top, plan.tail, axis=0), plan.segment, axis=0)  # (nc, R)
    rel = xp.where(valid, s - top[..., None], 0.0)
    w = xp.exp(xp.where(valid, rel, -xp.inf))
    unused = xp.zeros_like(s)
    x = Slab(**fields, s=s, rel=rel, w=w, m_row=unused, decay=unused, mean=unused,
             m_prev=top, m_end=top, s_ref=top, t=xp.ones_like(plan.position, dtype=s.dtype))
    _, sums, marks = _run_slabs(xp, x, None, plan, outputs=False, finals=True, slab=slab,
                                scan=scan, exact=exact, power=power)  # (S, R, ...)
    n = xp.astype(_lengths(xp, plan), s.dtype)  # (S,)
    mean = xp.sum(xp.reshape(rel, (rel.shape[0], rel.shape[1], -1)), axis=-1)  # (nc, R)
    mean = xp.take(segmented_scan(xp, mean, plan.start, xp.add), plan.tail, axis=0)
    mean = mean / xp.where(n > 0, n, 1.0)[:, None]  # (S, R): sbar - s_ref

    def per_chunk(x: Any) -> Any:  # (S, R, ...) -> (nc, R, 1, ...) each chunk's sequence
        return xp.expand_dims(xp.take(x, plan.segment, axis=0), axis=2)

    count = xp.take(n, plan.segment, axis=0)[:, None, None]  # (nc, 1, 1)
    g1, gh, g0 = fields["first"], fields["higher"], fields["zero"]
    a = gh / per_chunk(sums.e)
    b = (g1 - gh) / count
    c = (g0 - gh) / count - b * per_chunk(mean)
    # Every row of a sequence that met a non-finite key, value or logit is NaN.
    spoilt = xp.take(xp.take(marks.spoilt, plan.tail, axis=0), plan.segment, axis=0)
    whole = (sums.f, sums.g, sums.h)
    directions = (lambda y: direction(xp, y)) if exact is None \
        else (lambda y: exact.directions(y, -1))

    def body(carry: Any, x: tuple[Any, ...]) -> tuple[Any, Any]:
        q, a, b, c, segment, bad, valid, spoilt = x
        q, bad_q = directions(q)
        totals = (xp.take(y, segment, axis=0) for y in whole)  # (S', R, D, Dv)
        out = sum(((z[..., None] * q) @ total
                   for z, total in zip((a, b, c), totals, strict=True)))
        reached = ((bad_q | bad) & valid[:, None, :]) | spoilt[..., None]
        out = xp.where(reached[..., None], xp.nan, out)
        if power is not None:  # outputs are at least tiny / eps where they count (7.1)
            out = exact.lowered(out, power[None, :, None, None], exact=False)
        return carry, out

    xs = tuple(xp.reshape(x, (x.shape[0] // slab, slab, *x.shape[1:]))
               for x in (fields["q"], a, b, c, plan.segment, fields["bad_row"], plan.valid,
                         spoilt))
    _, outs = scan(body, xp.zeros(()), xs)
    return xp.reshape(outs, (-1, *outs.shape[2:])), marks
