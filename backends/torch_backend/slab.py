"""One slab of chunks of the torch chunk form (`chunked`): spec 4.2 steps 2-6 for S
consecutive chunks at once, given the sums before the slab; and the seam every form of
`chunked` reads and returns, `Chunks` and `Sums` (their frames: `chunked`'s docstring).

Shapes: R rows, S chunks of C tokens, D and Dv. Everything here is a product or an
elementwise operation on tensors of one slab, the unit directions included (taken from the
run of tokens the slab holds, as given, `screen.directions`), so its temporaries stay small
and are reused by the allocator from slab to slab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .plan import runs, to_tokens
from .screen import directions

__all__ = ["TENSORS", "Chunks", "Sequences", "Sums", "links", "slab"]


class Chunks(NamedTuple):
    """What the chunk step of spec 4.2 reads, for every chunk of a causal call; used by field
    name only (``chunks.q``), never by position.

    Shapes: R rows, nc chunks of C slots holding the run of N tokens ``bounds[0] ..
    bounds[nc] - 1`` (the chunk plan's), D and Dv, all of the compute dtype; padding slots
    have s = rel = w = 0 and zero keys. Every field is finite but the vectors, which are the
    tokens' as the caller gave them (views: no whole-call copy, not laid out in slots), and
    their peaks: a form reads those only through `vectors`, which gives finite unit
    directions and values in the slots, and returns outputs per token (`tokens`). Frames:
    m_row is row t's running max m_t, m_prev and m_end the running max before and at the end
    of each chunk (M_{c-1}, M_c); s_ref is the call's reference logit.
    """

    t: torch.Tensor  # (nc, C) the count of tokens seen up to each row, state included
    q: torch.Tensor  # (R, N, D) query vectors of the tokens, as given (read through `vectors`)
    k: torch.Tensor  # (R, N, D) key vectors of the tokens, as given (read through `vectors`)
    v: torch.Tensor  # (R, N, Dv) values of the tokens, as given (read through `vectors`)
    token: torch.Tensor  # (nc, C) int64 the token in each slot (padding: its chunk's last)
    place: torch.Tensor  # (N,) int64 the slot of each token, nc C slots counted in the call
    q_peak: torch.Tensor  # (R, nc, C) largest magnitude of q_t, NaN or inf where not finite
    k_peak: torch.Tensor  # (R, nc, C) the same for k_t; inf in padding slots (zero keys)
    s: torch.Tensor  # (R, nc, C) logits
    rel: torch.Tensor  # (R, nc, C) s - s_ref
    w: torch.Tensor  # (R, nc, C) exp(s - M_c) <= 1, the key weights in their chunk's frame
    m_row: torch.Tensor  # (R, nc, C) m_t
    decay: torch.Tensor  # (R, nc, C) exp(M_{c-1} - m_t) <= 1, moves the carried F and E to m_t
    mean: torch.Tensor  # (R, nc, C) sbar_t - s_ref
    first: torch.Tensor  # (R, nc, C) gate g1_t
    higher: torch.Tensor  # (R, nc, C) gate gh_t
    zero: torch.Tensor  # (R, nc, C) gate g0_t
    m_prev: torch.Tensor  # (R, nc) M_{c-1} (the sequence's s_ref where the chunk starts it)
    m_end: torch.Tensor  # (R, nc) M_c
    s_ref: torch.Tensor  # (R, nc) s_ref of the chunk's sequence
    segment: torch.Tensor  # (nc,) int64 the sequence of each chunk (chunk plan)
    start: torch.Tensor  # (nc,) bool the chunk is its sequence's first
    end: torch.Tensor  # (nc,) bool the chunk is its sequence's last
    bounds: tuple[int, ...]  # (nc + 1) host ints: chunk c holds tokens bounds[c] .. bounds[c+1]-1

    def by_name(self) -> dict[str, torch.Tensor]:
        """The tensor fields (all but `bounds`), name -> tensor."""
        return {name: getattr(self, name) for name in TENSORS}

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The vectors as every form computes with them (`screen.directions`), in the slots:
        unit directions of q and k, (R, nc, C, D) each, a zero vector where the screening
        found a non-finite value and in padding slots; the values (R, nc, C, Dv) with
        non-finite entries zero. Fresh contiguous tensors, differentiable in q, k and v."""
        q, k, v = directions(self.q, self.k, self.v, self.token, self.q_peak, self.k_peak)
        return q.contiguous(), k.contiguous(), v.contiguous()

    def tokens(self, out: torch.Tensor) -> torch.Tensor:
        """The outputs (R, nc, C, Dv) of the slots as those of the tokens, (R, N, Dv): a view
        unless a slot is padding (`plan.to_tokens`)."""
        return to_tokens(out, self.place)

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Chunks:
        """`function` applied to every tensor field (which must keep its role and shape)."""
        return self._replace(**{name: function(x) for name, x in self.by_name().items()})

    def split(self, size: int) -> list[Chunks]:
        """Consecutive slabs of `size` chunks (the last may be shorter) and the runs of
        tokens they hold: views, each field split once along its chunk or token axis (so
        that the backward pass joins the gradients of all slabs in one tensor rather than
        allocating a whole-sized one per slab)."""
        held = runs(self.bounds, size)
        parts = {name: torch.split(x, held if name in _PER_TOKEN else size,
                                   dim=_PER_TOKEN.get(name, 0 if name in _PER_CHUNK else 1))
                 for name, x in self.by_name().items()}
        return [Chunks(**{name: part[j] for name, part in parts.items()},
                       bounds=self.bounds[j * size:(j + 1) * size + 1])
                for j in range(len(held))]


TENSORS = tuple(name for name in Chunks._fields if name != "bounds")
"""The tensor fields of `Chunks`, in order (what a form that hands them on as tensors, such
as an autograd Function, passes)."""
_PER_CHUNK = ("t", "token", "segment", "start", "end")
"""The fields of `Chunks` shared by every row: their chunk axis is axis 0."""
_PER_TOKEN = {"q": 1, "k": 1, "v": 1, "place": 0}
"""The fields of `Chunks` per token, and their token axis."""


class Sums(NamedTuple):
    """The sums of spec 4.1 carried between chunks (`chunked`'s docstring gives their frames):
    F and E relative to the frame of the last chunk absorbed, G' about s_ref (not sbar), H.
    Used by field name only. Shapes (R, D, Dv), (R,), (R, D, Dv), (R, D, Dv) for the sums
    after a chunk; the sums each chunk of a slab reads add an axis S after R."""

    f: torch.Tensor
    e: torch.Tensor
    g: torch.Tensor
    h: torch.Tensor

    def by_name(self) -> dict[str, torch.Tensor]:
        """The fields, name -> tensor."""
        return {name: getattr(self, name) for name in Sums._fields}

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Sums:
        """`function` applied to every field."""
        return Sums(**{name: function(x) for name, x in self.by_name().items()})


class Sequences(NamedTuple):
    """What a `Form` needs to know of the sequences whose chunks it computes.

    init : Sums or None
        The sums before each sequence's first chunk, leading axes (S, R): F and E in the
        frame of that chunk's ``m_prev`` (the sequence's s_ref), G' about it; None where
        every sequence starts empty (zero sums, never materialised: S may be large).
    count : int
        S, the number of sequences (1 for a dense call).
    finals : bool
        Whether the form returns the sums after each sequence's last chunk.
    """

    init: Sums | None
    count: int
    finals: bool


def links(start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How the S consecutive chunks of a slab feed each other, from which of them start a
    sequence (`start`, (S,)).

    Returns `lower` (S, S): chunk j < c of the same sequence feeds chunk c; and `entering`
    (S,): chunk c continues the sequence of the chunk before the slab (no start at or before
    it), so it reads the sums carried into the slab.
    """
    opened = torch.cumsum(start.to(torch.int32), dim=0)  # the sequence, counted in the slab
    index = torch.arange(start.shape[0], device=start.device)
    lower = (index[None, :] < index[:, None]) & (opened[None, :] == opened[:, None])
    return lower, opened == 0


def slab(chunks: Chunks, carry: Sums, init: Sums | None) -> tuple[torch.Tensor, Sums]:
    """Outputs (R, S, C, Dv) of a slab of S chunks, and the sums after each of them.

    Step 6 for every chunk of the slab: U_c = K_c^T [w v, (s - s_ref) v, v] (F relative to
    M_c). The sums chunk c reads are those before it in its sequence: F and E in the frame
    M_{c-1}, ``sum_{j<c} exp(M_j - M_{c-1}) U_j`` over the chunks j of its sequence, plus the
    sums its sequence entered the slab with (the carry, or its initial sums where it starts
    in the slab) moved to M_{c-1}: one product with a decay matrix whose exponents are all
    <= 0; G' and H, plain sums. Then steps 2-5 (`_chunk_outputs`).

    Parameters
    ----------
    chunks : Chunks
        S consecutive chunks (the run of tokens they hold as given, with the peaks), in
        any strides.
    carry : Sums
        The sums after the chunk before the slab: F and E in the frame
        ``chunks.m_prev[:, 0]`` (where its sequence goes on), G' about s_ref, H; (R, D, Dv)
        and E (R,), of the compute dtype.
    init : Sums or None
        The initial sums of each chunk's sequence, (R, S, D, Dv) and E (R, S), read by the
        chunks whose sequence starts in the slab; None for zeros.

    Returns
    -------
    out : torch.Tensor
        (R, S, C, Dv), the outputs of every row of the slab.
    after : Sums
        The sums after each chunk, (R, S, D, Dv) and E (R, S), F and E in the frame
        ``chunks.m_end``.
    """
    # The slab's unit directions and finite values, one contiguous copy of each (in the
    # caches): the products below then make no hidden ones.
    qc, kc, vc = chunks.vectors()
    w, m_prev, m_end = chunks.w, chunks.m_prev, chunks.m_end
    rows, count, chunk, d = kc.shape
    dv = vc.shape[-1]
    # Every chunk of the slab in one batch of B = R S matrices, views of contiguous memory:
    # the updates K_c^T [w v, (s - s_ref) v, v], (R, S, D Dv) each.
    keys = kc.reshape(-1, chunk, d).transpose(1, 2)  # (B, D, C)
    update_f, update_g, update_h = (
        torch.bmm(keys, x.reshape(-1, chunk, dv)).view(rows, count, d * dv)
        for x in (w[..., None] * vc, chunks.rel[..., None] * vc, vc))
    lower, entering = links(chunks.start)
    gaps = torch.where(lower, m_end[..., None, :] - m_prev[..., :, None], float("-inf"))
    decays = torch.exp(gaps)  # (R, S, S): exp(M_j - M_{c-1}) <= 1
    # The sums each chunk's sequence entered the slab with (the carry, in the frame
    # M_{-1} of the slab, or its initial sums, in the frame s_ref), moved to M_{c-1}.
    moved = torch.exp(torch.where(entering, m_prev[:, :1], chunks.s_ref) - m_prev)  # (R, S)

    def entry(carried: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
        carried = carried.reshape(rows, 1, -1)
        ent = entering[:, None]
        if initial is None:
            return torch.where(ent, carried, 0.0)
        return torch.where(ent, carried, initial.reshape(rows, count, -1))

    start = {name: entry(getattr(carry, name), None if init is None else getattr(init, name))
             for name in Sums._fields}  # (R, S, D Dv) each, E (R, S, 1)
    w_sum = w.sum(dim=-1)  # (R, S)
    f_before = torch.bmm(decays, update_f).addcmul_(moved[..., None], start["f"])
    e_before = torch.bmm(decays, w_sum[..., None])[..., 0] + moved * start["e"][..., 0]
    ones = lower.to(w.dtype).expand(rows, -1, -1)
    g_before, h_before = (torch.bmm(ones, x).add_(start[name])
                          for x, name in ((update_g, "g"), (update_h, "h")))
    before = Sums(f=f_before, e=e_before, g=g_before, h=h_before)  # what each chunk reads
    out = _chunk_outputs(chunks, qc, keys, vc, before)
    step = torch.exp(m_prev - m_end)  # (R, S): M_{c-1} to M_c
    after = Sums(f=(step[..., None] * f_before + update_f).view(rows, count, d, dv),
                 e=step * e_before + w_sum,
                 g=(g_before + update_g).view(rows, count, d, dv),
                 h=(h_before + update_h).view(rows, count, d, dv))
    return out, after


def _chunk_outputs(chunks: Chunks, qc: torch.Tensor, keys: torch.Tensor, vc: torch.Tensor,
                   before: Sums) -> torch.Tensor:
    """Steps 2-5 of a slab of S chunks: outputs (R, S, C, Dv).

    Within the chunk, W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (s_i - sbar_t) + c_t) for
    i <= t, with a_t = gh_t / E_t and E_t the carried normaliser (moved to row t's frame by
    `decay`) plus the chunk's own exponentials. With the chunks before (F, G', H) the output is

        sum_i W[t, i] v_i + a_t decay_t qh_t F + b_t qh_t G' + (c_t - b_t (sbar_t - s_ref)) qh_t H,

    with W written as cos (a_t exp(s_i - m_t) + b_t (s_i - s_ref) + c_t - b_t (sbar_t - s_ref)):
    one product with the chunk's C x C matrix and three with the sums.

    Parameters
    ----------
    chunks : Chunks
        The slab's S chunks; its per-row fields (R, S, C) and counts t (S, C) in any strides.
    qc, vc : torch.Tensor
        The unit query directions (R, S, C, D) and the finite values (R, S, C, Dv) of
        ``chunks.vectors()``, contiguous.
    keys : torch.Tensor
        (R S, D, C), the transposed keys of every chunk.
    before : Sums
        The sums each chunk reads: F (in the frame M_{c-1}), G' and H (R, S, D Dv), E (R, S).
    """
    rows, count, chunk, d = qc.shape
    dv = vc.shape[-1]
    s, gh = chunks.s, chunks.higher
    q3 = qc.reshape(-1, chunk, d)
    cos = torch.bmm(q3, keys).tril_().view(rows, count, chunk, chunk)  # zero above the diagonal
    # exp(s_i - m_t) <= 1 for i <= t. Exponents below log(tiny) + 1 are raised to it (the
    # weight changes by less than 3 times the smallest normal number, against E_t >= 1), and
    # so are those above the diagonal (clamped to [floor, floor]), which meet a zero cosine:
    # exp then never makes a subnormal number or reads -inf, both of which are much slower
    # on a CPU.
    floor = math.log(torch.finfo(s.dtype).tiny) + 1.0
    index = torch.arange(chunk, device=s.device)
    lowest = torch.full((chunk, chunk), floor, dtype=s.dtype, device=s.device)
    highest = lowest.where(index[None, :] > index[:, None], 0.0)  # (C, C)
    e = (s[..., None, :] - chunks.m_row[..., None]).clamp_(min=lowest, max=highest).exp_()
    a = gh / (chunks.decay * before.e[..., None] + e.sum(dim=-1))  # gh / E_t, E_t >= 1
    b = (chunks.first - gh) / chunks.t
    c = (chunks.zero - gh) / chunks.t - b * chunks.mean
    weights = torch.addcmul(c[..., None], a[..., None], e)  # (R, S, C, C): a e + c
    weights = weights.addcmul_(b[..., None], chunks.rel[..., None, :]).mul_(cos)  # + b rel
    out = torch.bmm(weights.view(-1, chunk, chunk), vc.reshape(-1, chunk, dv))
    for scale, sum_before in ((a * chunks.decay, before.f), (b, before.g), (c, before.h)):
        out = out.baddbmm_((scale[..., None] * qc).reshape(-1, chunk, d),
                           sum_before.view(-1, d, dv))
    return out.view(rows, count, chunk, dv)
