"""The chunk plan of a call: which chunk of C tokens holds which tokens of which sequence.

The chunk form (`chunked`) lays the tokens of a call out as nc chunks of C slots. A dense
call is one sequence per row: its N tokens, then padding to a multiple of C. A packed call
(spec 5.2, ``cu_seqlens``) never lets a chunk span two sequences, as flash-linear-attention's
chunk kernels do (its ``chunk_indices``): sequence j of length l_j takes ceil(l_j / C) chunks
of its own, its last one padded, and an empty sequence takes none. Every chunk then belongs
to one sequence; a chunk that starts one begins from that sequence's initial state, and the
sums after the last chunk of a sequence are its final state. The padding costs at most C - 1
slots per sequence, never the padding to the longest sequence.

Every chunk holds consecutive tokens, and consecutive chunks consecutive runs of them: the
slots of chunks c0 .. c1 - 1 read exactly the tokens ``bounds[c0] .. bounds[c1] - 1``, the
padding slots a copy of their chunk's last token. A form that walks the chunks a slab at a
time therefore reads and writes a contiguous run of the call's tokens per slab (a view of the
inputs, and of the outputs), gathers only where a slab holds padding, and never copies the
whole call into the plan's layout.

`ChunkPlan` holds both what the host needs (the offsets and the chunks' bounds, as Python
ints, for the shapes, the runs of tokens and the lengths of the returned states) and what the
device reads (index tensors). Making one reads ``cu_seqlens`` on the host once (a device sync
where it lives on a GPU); a caller that runs many calls on the same batch, as the layers of a
model do, makes the plan once with `chunk_plan` and passes it to every call, which then makes
no host sync at all.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import torch

from zeros_ref.kernel import State, host_offsets

__all__ = ["ChunkPlan", "check_plan", "chunk_plan", "counts", "dense_plan", "in_slots",
           "packed_plan", "per_chunk", "runs", "segmented_scan", "to_slots", "to_tokens"]


class ChunkPlan(NamedTuple):
    """The layout of a call's tokens in nc chunks of C slots (module docstring).

    Host fields: `offsets` (o_0 = 0, ..., o_S = T) and `chunk` (C); `packed` says whether the
    call is a packed one (else S = 1 and the chunks are the N tokens, then padding); `bounds`
    (nc + 1 ints): chunk c holds the tokens ``bounds[c] .. bounds[c + 1] - 1`` (its first
    slots; the rest is padding), ``bounds[nc] = T``. Device fields, on the device of the call:

        segment  (nc,)      int64  the sequence of each chunk
        start    (nc,)      bool   the chunk is its sequence's first
        end      (nc,)      bool   the chunk is its sequence's last
        position (nc, C)    int64  each slot's token position within its sequence (0-based)
        valid    (nc C,)    bool   the slot holds a token (not padding)
        token    (nc C,)    int64  the packed token of each slot (padding: its chunk's last)
        place    (T,)       int64  the slot of each packed token
        first    (S,)       int64  the slot of each sequence's first token (0 if empty)
        last     (S,)       int64  the slot of each sequence's last token (0 if empty)
        tail     (S,)       int64  each sequence's last chunk (0 if empty)
        filled   (S,)       bool   the sequence is not empty
    """

    offsets: tuple[int, ...]
    chunk: int
    packed: bool
    bounds: tuple[int, ...]
    segment: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    position: torch.Tensor
    valid: torch.Tensor
    token: torch.Tensor
    place: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    tail: torch.Tensor
    filled: torch.Tensor

    @property
    def count(self) -> int:
        """S, the number of sequences."""
        return len(self.offsets) - 1

    @property
    def chunks(self) -> int:
        """nc, the number of chunks."""
        return self.segment.shape[0]

    @property
    def lengths(self) -> tuple[int, ...]:
        """The length of every sequence."""
        return tuple(b - a for a, b in pairwise(self.offsets))


def _layout(lengths: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """The device fields of `ChunkPlan` as NumPy arrays, for sequences of `lengths`."""
    per = -(-lengths // chunk)  # chunks per sequence
    count, nc = lengths.shape[0], int(per.sum())
    segment = np.repeat(np.arange(count), per)
    first_chunk = np.cumsum(per) - per  # (S,)
    index = np.arange(nc) - first_chunk[segment]  # chunk within its sequence
    position = index[:, None] * chunk + np.arange(chunk)  # (nc, C)
    valid = position < lengths[segment][:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    token = np.minimum(offsets[segment][:, None] + position, offsets[segment + 1][:, None] - 1)
    slots = np.arange(nc * chunk).reshape(nc, chunk)
    filled = lengths > 0
    tail = np.where(filled, first_chunk + per - 1, 0)
    return {
        "segment": segment, "start": index == 0, "end": index == per[segment] - 1,
        "position": position, "valid": valid.reshape(-1), "token": token.reshape(-1),
        "place": slots[valid], "first": np.where(filled, first_chunk * chunk, 0),
        "last": np.where(filled, tail * chunk + (lengths - 1) % chunk, 0), "tail": tail,
        "filled": filled,
    }


def _plan(offsets: tuple[int, ...], chunk: int, device: torch.device, *,
          packed: bool) -> ChunkPlan:
    fields = _layout(np.diff(np.asarray(offsets, dtype=np.int64)), chunk)
    bounds = (*fields["token"][::chunk].tolist(), offsets[-1])  # each chunk's first token
    tensors = {name: torch.as_tensor(x, device=device) for name, x in fields.items()}
    return ChunkPlan(offsets=offsets, chunk=chunk, packed=packed, bounds=bounds, **tensors)


def packed_plan(offsets: tuple[int, ...], chunk: int, device: torch.device) -> ChunkPlan:
    """The plan of a packed call whose offsets (o_0, ..., o_S) are already on the host."""
    return _plan(offsets, chunk, device, packed=True)


def chunk_plan(cu_seqlens: torch.Tensor, chunk_size: int) -> ChunkPlan:
    """The chunk plan of a packed call: chunks of `chunk_size` tokens, none spanning two
    sequences.

    Parameters
    ----------
    cu_seqlens : torch.Tensor
        (S + 1,) integer offsets ``0 = o_0 <= ... <= o_S = T`` (spec 5.2), on the device of
        the call. Read on the host once (checked as in spec 8, ZS-ERR-VARLEN).
    chunk_size : int
        C; it must be the chunk length of the backend that takes the plan.

    Returns
    -------
    ChunkPlan
        Pass it as ``chunk_plan=`` with the same `cu_seqlens`: the call then reads nothing
        back from the device.

    Examples
    --------
    >>> plan = chunk_plan(torch.tensor([0, 3, 3, 70]), 64)
    >>> plan.chunks, plan.lengths, plan.segment.tolist()
    (3, (3, 0, 67), [0, 2, 2])
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"`cu_seqlens` must be a torch tensor; got {type(cu_seqlens).__name__}")
    return packed_plan(host_offsets(cu_seqlens), chunk_size, cu_seqlens.device)


def dense_plan(n: int, chunk: int, device: torch.device) -> ChunkPlan:
    """The plan of one sequence of n >= 1 tokens per row: ceil(n / C) chunks, the last
    padded (made with torch operations alone, which `torch.compile` traces)."""
    nc = -(-n // chunk)

    def ints(*values: int) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    index = torch.arange(nc, device=device)
    slots = torch.arange(nc * chunk, device=device)
    return ChunkPlan(offsets=(0, n), chunk=chunk, packed=False,
                     bounds=(*range(0, n, chunk), n),
                     segment=torch.zeros(nc, dtype=torch.int64, device=device),
                     start=index == 0, end=index == nc - 1, position=slots.view(nc, chunk),
                     valid=slots < n, token=slots.clamp(max=n - 1),
                     place=torch.arange(n, device=device), first=ints(0), last=ints(n - 1),
                     tail=ints(nc - 1), filled=ints(1) > 0)


def check_plan(plan: ChunkPlan, cu_seqlens: torch.Tensor, chunk: int) -> None:
    """That `plan` fits a call with `cu_seqlens` and chunk length `chunk` (host fields only:
    no device read)."""
    if not isinstance(plan, ChunkPlan) or not plan.packed:
        raise TypeError("`chunk_plan` must be a ChunkPlan made by chunk_plan(cu_seqlens, C); "
                        f"got {type(plan).__name__}")
    if plan.chunk != chunk:
        raise ValueError(f"`chunk_plan` was made for chunks of {plan.chunk} tokens but this "
                         f"backend's chunk_size is {chunk}")
    if tuple(cu_seqlens.shape) != (plan.count + 1,):
        raise ValueError(f"`chunk_plan` was made for {plan.count} sequences but `cu_seqlens` "
                         f"has shape {tuple(cu_seqlens.shape)}")
    if plan.segment.device != cu_seqlens.device:
        raise ValueError(f"`chunk_plan` is on device {plan.segment.device} but `cu_seqlens` "
                         f"is on {cu_seqlens.device}")



def segmented_scan(x: torch.Tensor, start: torch.Tensor,
                   combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Inclusive scan of `x` (R, nc, ...) along axis 1 with `combine` (an associative
    function such as `torch.maximum` or `torch.add`), restarting where `start` (nc,) is True.

    Hillis and Steele's scan: log2(nc) steps, each one elementwise operation on the whole
    tensor, and no chunk's value ever combined with one of another sequence.
    """
    value, flag = x, start
    step, nc = 1, x.shape[1]
    tail = (1,) * (x.dim() - 2)
    while step < nc:
        joined = combine(value[:, :-step], value[:, step:])
        keep = flag[step:].reshape(-1, *tail)
        value = torch.cat([value[:, :step], torch.where(keep, value[:, step:], joined)], dim=1)
        flag = torch.cat([flag[:step], flag[step:] | flag[:-step]])
        step *= 2
    return value


def in_slots(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """A per-token `x` (R, N, ...) laid out in the slots of `plan`, (R, L, ...) with L = nc C:
    one gather (a padding slot holds its chunk's last token). For what is small (logits,
    gates, peaks); the vectors are laid out a slab at a time (`to_slots`)."""
    return x.index_select(1, plan.token)


def runs(bounds: tuple[int, ...], size: int) -> list[int]:
    """The number of tokens each slab of `size` consecutive chunks holds (the last slab may
    be shorter), from the chunks' `bounds` (nc + 1 ints, `ChunkPlan.bounds`)."""
    nc = len(bounds) - 1
    return [bounds[min(c + size, nc)] - bounds[c] for c in range(0, nc, size)]


def to_slots(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """The run of tokens `x` (R, M, ...) that S consecutive chunks hold, in their slots
    (R, S, C, ...); `token` (S, C) is the token of each slot, counted in the call (the first
    slot holds the run's first token). A view where no slot is padding (M = S C, as in every
    slab of a dense call but its last), else one gather of the run (its copy the size of the
    slabs, never of the call)."""
    rows, (count, chunk) = x.shape[0], token.shape
    if x.shape[1] != count * chunk:
        x = x.index_select(1, (token - token[:1, :1]).reshape(-1))
    return x.reshape(rows, count, chunk, *x.shape[2:])


def to_tokens(out: torch.Tensor, place: torch.Tensor) -> torch.Tensor:
    """The outputs (R, S, C, ...) of the slots of S consecutive chunks as the outputs of the
    run of tokens they hold, (R, M, ...); `place` (M,) is the slot of each token, counted in
    the call (the run's first token sits in the first slot). A view where no slot is padding,
    else one gather; the inverse of `to_slots`."""
    rows, count, chunk = out.shape[:3]
    flat = out.reshape(rows, count * chunk, *out.shape[3:])
    return flat if place.shape[0] == count * chunk else flat.index_select(1, place - place[:1])


def per_chunk(x: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """The per-sequence `x` (S, R, ...) at every chunk, (R, nc, ...): a view where S = 1."""
    if x.shape[0] == 1:
        return x[0].unsqueeze(1).expand(-1, segment.shape[0], *x.shape[2:])
    return x.index_select(0, segment).transpose(0, 1)


def counts(state: State, plan: ChunkPlan, dtype: torch.dtype) -> torch.Tensor:
    """n_t (nc, C): the tokens of its sequence up to each slot, its initial state's too."""
    prior = torch.tensor(state.length, dtype=dtype, device=plan.segment.device)  # (S,)
    return prior[plan.segment][:, None] + plan.position.to(dtype) + 1.0
