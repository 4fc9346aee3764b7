"""Non-finite inputs, handled once before any form of `chunked` computes the chunks
(ZS-ERR-NONFINITE, ZS-ERR-NONFINITE-V), and the unit directions of spec 2.1.

`screen` hands every form finite numbers: a query or key vector holding a non-finite entry
becomes a zero vector, and the non-finite entries of the values, the logits and the gates
become zeros. It also says where they were, so that `chunked.attention` sets to NaN the rows
they reach (its own row for a query or a gate; every later row, and the state, for a key, a
value or a logit), with `where` selections, never a branch on tensor data.

Shapes: R rows (the flattened leading axes), L tokens (padding included), D and Dv.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint

__all__ = ["Screened", "screen"]


class Screened(NamedTuple):
    """The inputs as every form takes them, finite, and where they were not (R rows, L
    tokens); used by field name."""

    q: torch.Tensor  # (R, L, D) unit query directions
    k: torch.Tensor  # (R, L, D) unit key directions
    v: torch.Tensor  # (R, L, Dv) values
    s: torch.Tensor  # (R, L) logits
    first: torch.Tensor  # (R, L) gate g1
    higher: torch.Tensor  # (R, L) gate gh
    zero: torch.Tensor  # (R, L) gate g0
    bad_rows: torch.Tensor  # (R, L) bool: q or a gate not finite; reaches its own row
    bad_keys: torch.Tensor  # (R, L) bool: k, v or the logit not finite; reaches later rows


def screen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
           gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Screened:
    """The inputs of a call as finite numbers, and where they were not (ZS-ERR-NONFINITE, -V).

    Parameters
    ----------
    q, k : torch.Tensor
        (R, L, D) raw vectors, of the compute dtype.
    v : torch.Tensor
        (R, L, Dv) raw values.
    s : torch.Tensor
        (R, L) logits (given or default).
    gates : tuple of torch.Tensor
        The gates g1, gh, g0, (R, L) each.

    Returns
    -------
    Screened
        Unit directions of q and k, values, logits and gates, with zeros where an input was
        not finite (a whole zero vector for q and k), of the input's dtype; and the rows and
        keys that were not. When autograd records, the directions are recomputed in the
        backward pass instead of kept (`_recomputed`).
    """
    s, bad_s = _finite(s)
    (first, bad_first), (higher, bad_higher), (zero, bad_zero) = (_finite(g) for g in gates)
    peaks = _peak(q), _peak(k), _peak(v)  # (R, L) each
    qh, kh, v = _recomputed(_directions, q, k, v, peaks[0], peaks[1])
    bad_rows = bad_first | bad_higher | bad_zero | _broken(peaks[0])
    bad_keys = _broken(torch.maximum(peaks[1], peaks[2])) | bad_s  # maximum keeps NaN
    return Screened(q=qh, k=kh, v=v, s=s, first=first, higher=higher, zero=zero,
                    bad_rows=bad_rows, bad_keys=bad_keys)


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


def _directions(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_peak: torch.Tensor,
                k_peak: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Unit directions of q and k (..., D) and the values (..., Dv), from raw vectors and the
    largest magnitudes (...,) of q and k (`_peak`): a vector of q or k that holds a
    non-finite entry becomes a zero vector, and so do the non-finite entries of the values.
    Each vector is divided by its largest magnitude before its norm is taken, so the
    direction is exact for any finite scale."""
    return _unit(q, q_peak), _unit(k, k_peak), torch.nan_to_num(v, 0.0, 0.0, 0.0)


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


def _recomputed(step: Any, *args: Any) -> Any:
    """`step(*args)`; when gradients are recorded, its intermediates are recomputed in the
    backward pass instead of kept (activation checkpointing): training memory stays a small
    multiple of the inputs rather than of every temporary."""
    if _recording(*(x for x in args if isinstance(x, torch.Tensor))):
        return torch.utils.checkpoint.checkpoint(step, *args, use_reentrant=False)
    return step(*args)


def _recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on these tensors (a flag, not tensor data)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
