"""Non-finite inputs, handled once before any form of `chunked` computes the chunks
(ZS-ERR-NONFINITE, ZS-ERR-NONFINITE-V), and the unit directions of spec 2.1.

`screen` runs once over the whole call, before any form, and decides everything about
non-finite inputs with cheap reductions: the logits and the gates become finite (their
non-finite entries zeros), the largest magnitude of every query and key vector is taken (NaN
or inf exactly where the vector holds a non-finite value), and it says where non-finite
values were, so that `chunked.attention` sets to NaN the rows they reach (its own row for a
query or a gate; every later row, and the state, for a key, a value or a logit), with `where`
selections, never a branch on tensor data.

The vectors themselves are neither copied nor laid out in the chunk plan's slots: whole-call
copies of q, k and v would cost a pass over memory each, and fresh memory of that size costs
more still (its pages are faulted in on every call). A form reads them through `directions`,
with the peaks of the screening, where it needs them (the default form a slab at a time, so
that the temporaries stay in the caches; Triton's for the whole call): the run of tokens the
chunks hold, laid out in their slots (`plan.to_slots`: a view unless a slot is padding), as
unit directions of q and k, a zero vector where the screening found a non-finite value or
the slot is padding, and the values with non-finite entries zero. Every form therefore
computes on the same finite numbers.

Shapes: R rows (the flattened leading axes), N tokens, L = nc C slots of the chunk plan
(padding included), D and Dv.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .plan import ChunkPlan, in_slots, to_slots

__all__ = ["Screened", "directions", "screen"]


class Screened(NamedTuple):
    """The inputs of a call as the screening leaves them (R rows, N tokens laid out in L slots
    by the chunk plan); used by field name. The logits and gates are finite; the vectors are
    as given, per token, to be read through `directions` with their peaks, which are per
    slot."""

    q: torch.Tensor  # (R, N, D) query vectors, as given
    k: torch.Tensor  # (R, N, D) key vectors, as given
    v: torch.Tensor  # (R, N, Dv) values, as given
    q_peak: torch.Tensor  # (R, L) largest magnitude of q_t: NaN or inf where not finite
    k_peak: torch.Tensor  # (R, L) the same for k_t; inf in padding slots (zero keys there)
    s: torch.Tensor  # (R, L) logits
    first: torch.Tensor  # (R, L) gate g1
    higher: torch.Tensor  # (R, L) gate gh
    zero: torch.Tensor  # (R, L) gate g0
    bad_rows: torch.Tensor  # (R, L) bool: q or a gate not finite; reaches its own row
    bad_keys: torch.Tensor  # (R, L) bool: k, v or the logit not finite; reaches later rows


def screen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
           gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor], plan: ChunkPlan) -> Screened:
    """The inputs of a call screened for non-finite values (ZS-ERR-NONFINITE, -V).

    Parameters
    ----------
    q, k : torch.Tensor
        (R, N, D) raw vectors of the call's tokens, of the compute dtype.
    v : torch.Tensor
        (R, N, Dv) raw values.
    s : torch.Tensor
        (R, L) logits (given or default), laid out in the slots of `plan`.
    gates : tuple of torch.Tensor
        The gates g1, gh, g0, (R, L) each, laid out the same way.
    plan : ChunkPlan
        The chunk plan of the call.

    Returns
    -------
    Screened
        The logits and gates with zeros where they were not finite; the vectors as given
        (not copied) with the peaks of q and k in the slots, which `directions` needs (the
        peak of a padding key is inf: `directions` makes it a zero vector, so that no form
        counts it); and the rows and keys of real tokens that held a non-finite value.
        Reductions and (R, L) selections only: nothing of the size of q, k or v is made.
    """
    s, bad_s = _finite(s)
    (first, bad_first), (higher, bad_higher), (zero, bad_zero) = (_finite(g) for g in gates)
    q_peak, k_peak, v_peak = (in_slots(_peak(x), plan) for x in (q, k, v))  # (R, L) each
    bad_rows = (bad_first | bad_higher | bad_zero | _broken(q_peak)) & plan.valid
    bad_keys = (_broken(torch.maximum(k_peak, v_peak)) | bad_s) & plan.valid  # keeps NaN
    return Screened(q=q, k=k, v=v, q_peak=q_peak,
                    k_peak=k_peak.masked_fill_(~plan.valid, math.inf), s=s, first=first,
                    higher=higher, zero=zero, bad_rows=bad_rows, bad_keys=bad_keys)


def directions(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token: torch.Tensor,
               q_peak: torch.Tensor, k_peak: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit directions of q and k (R, S, C, D) and finite values (R, S, C, Dv) in the slots
    of S consecutive chunks, from the run of tokens they hold as given, q, k (R, M, D) and v
    (R, M, Dv), the token of each slot `token` (S, C) (`plan.to_slots`) and the peaks
    (R, S, C) of q and k that `screen` took: a vector of q or k that holds a non-finite entry
    (or a key whose peak is inf, as in a padding slot) becomes a zero vector, and so do the
    non-finite entries of the values. Each vector is divided by its largest magnitude before
    its norm is taken, so the direction is exact for any finite scale. Fresh tensors (the
    inputs are not written); the runs in any strides."""
    q, k, v = (to_slots(x, token) for x in (q, k, v))
    return _unit(q, q_peak), _unit(k, k_peak), torch.nan_to_num(v, 0.0, 0.0, 0.0)


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` with non-finite entries replaced by 0, and where they were."""
    ok = torch.isfinite(x)
    return torch.where(ok, x, 0.0), ~ok


def _peak(x: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of every vector along the last axis, (...,): NaN or inf exactly
    where the vector holds a non-finite value. Outside autograd (unit directions do not
    depend on it: x / |x| is the same whatever x is first divided by)."""
    x = x.detach()
    return torch.maximum(x.amax(dim=-1), x.amin(dim=-1).neg_())  # two reads, no temporary


def _broken(peak: torch.Tensor) -> torch.Tensor:
    """Which vectors hold a non-finite value, from their peaks: NaN or inf (two operations,
    where `torch.isfinite` takes five)."""
    return ~(peak < math.inf)


def _unit(x: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last axis, zero for zero vectors and for vectors holding a
    non-finite value (their peak is NaN or inf: x / peak is NaN or 0 throughout). Zeros are
    written in place, never selected with a broadcast mask (on a CPU such a selection costs
    several multiplications)."""
    y = x / torch.where(peak == 0, 1.0, peak)[..., None]
    recording = torch.is_grad_enabled() and x.requires_grad
    y = y.nan_to_num(0.0, 0.0, 0.0) if recording else y.nan_to_num_(0.0, 0.0, 0.0)
    norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    norm = torch.where(norm > 0, norm, 1.0)
    return y / norm if recording else y.div_(norm)
