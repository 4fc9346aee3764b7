"""Context parallelism: one sequence split over the ranks of a `torch.distributed` group
(spec 5.3).

Each rank holds a contiguous slice of the sequence, rank r the r-th slice, and gets the
outputs of its slice. Only states cross ranks, a few D x Dv matrices per row however long
the slices are:

1. default logits only: one all-gather of every rank's key sum and count (D + 1 numbers a
   row), from which each rank forms its slice's logits as one call on the whole would;
2. a state pass: the state of the rank's slice from the empty state (`kernel.append`, no
   outputs);
3. one all-gather of the P states;
4. each rank merges the states of the ranks before it (`kernel.merge_states`, the exclusive
   merge) and runs its slice from that state with the backend's chunk form.

With ``return_state`` every rank also merges all P states: the state after the whole
sequence. Bidirectional attention (spec 4.3) merges all P states on every rank and reads
the whole sequence's state with each query (its default logits take the mean of all keys
from the gathered key sums).

The all-gathers are differentiable (`_AllGather`: the backward pass all-reduces the
gradients of the gathered states), so gradients equal those of one call on the whole, and
the whole sequence is never gathered. The slices may be uneven, and empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from array_api_compat import array_namespace

import zeros_ref
from zeros_ref import kernel

__all__ = ["attention", "bytes_sent", "layer"]

_SENT = [0]
"""Bytes of the tensors this process gave to the collectives in its last `attention` call."""


def bytes_sent() -> int:
    """Bytes of the tensors this process gave to the collectives (forward pass) in its last
    call of `attention`: independent of the slice's length."""
    return _SENT[0]


class _AllGather(torch.autograd.Function):
    """``all_gather`` as (P, *x.shape), differentiable: the gradient of a rank's tensor is the
    sum over ranks of the gradients of its gathered copy (one all-reduce)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        _SENT[0] += x.numel() * x.element_size()
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def _gathered(x: torch.Tensor, group: Any) -> torch.Tensor:
    return _AllGather.apply(x, group)


def _lengths(n: int, device: torch.device, group: Any) -> list[int]:
    """Every rank's slice length, in rank order (one all-gather of one integer)."""
    count = torch.tensor([n], dtype=torch.int64, device=device)
    parts = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, count, group=group)
    _SENT[0] += count.numel() * count.element_size()
    return [int(x) for x in parts]


_FLOATS = ("running_max", "mean_offset", "normaliser", "key_sum", "kv")
"""The floating fields of a `State`, in the order they travel."""


def _pack(state: zeros_ref.State, rows: int) -> torch.Tensor:
    """The state's floating fields as one (R, 3 + D + 3 D Dv) tensor."""
    return torch.cat([getattr(state, name).reshape(rows, -1) for name in _FLOATS], dim=1)


def _unpack(packed: torch.Tensor, like: zeros_ref.State, length: int) -> zeros_ref.State:
    """The inverse of `_pack` for a state shaped as `like`, of `length` tokens."""
    batch = like.running_max.shape  # *B
    fields, at = {}, 0
    for name in _FLOATS:
        shape = getattr(like, name).shape
        size = math.prod(shape[len(batch):])
        fields[name] = packed[:, at:at + size].reshape(shape)
        at += size
    return zeros_ref.State(length=length, **fields)


def _nothing_from(x: torch.Tensor) -> torch.Tensor:
    """A zero like `x` that is a function of it: a gradient reaches x (as zeros), and no NaN
    or infinity of x reaches the result."""
    return torch.where(torch.zeros_like(x, dtype=torch.bool), x, 0.0)


def _anchored(out: torch.Tensor, gathered: list[torch.Tensor]) -> torch.Tensor:
    """`out` of an empty slice, made a function of the gathered tensors: the backward pass of
    every rank must reach every all-gather, whose backward is a collective."""
    return out + sum(_nothing_from(g).sum() for g in gathered)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              logits: torch.Tensor | None = None, first: Any = 1.0, higher: Any = 1.0,
              zero: Any = 0.0, causal: bool = True, group: Any = None,
              return_state: bool = False, backend: Any = None) -> Any:
    """ZeroS attention of a sequence split over the ranks of `group`.

    Parameters
    ----------
    q, k : torch.Tensor
        (*B, n_r, D): this rank's slice, the r-th of the sequence for rank r of `group`.
    v : torch.Tensor
        (*B, n_r, Dv).
    logits, first, higher, zero
        As for `zeros_ref.attention`, this rank's slice of each ((*B, n_r) or a number);
        ``logits=None`` takes the default logits of the whole sequence.
    causal : bool
        Causal (spec 4.2), or bidirectional (spec 4.3: every query reads the merged state of
        the whole sequence).
    group : ProcessGroup or None
        The ranks that share the sequence; None: the default group.
    return_state : bool
        Also return the state after the whole sequence (the same on every rank).
    backend : TorchBackend or None
        What computes the slice; None: the torch backend of the tensors' device.

    Returns
    -------
    torch.Tensor, or (torch.Tensor, State)
        This rank's outputs (*B, n_r, Dv), and with `return_state` the whole's state.
    """
    if return_state and not causal:
        raise ValueError("`return_state` needs causal=True: bidirectional attention has no "
                         "state to continue")
    if backend is None:
        backend = _default_backend(q)
    _SENT[0] = 0
    # (validated as causal whatever the mode, for the empty state its pieces start from)
    inp, empty = kernel.check_call(q, k, v, logits=logits, first=first, higher=higher,
                                   zero=zero, causal=True, state=None, return_state=True)
    rows, n = math.prod(inp.batch), inp.n
    ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    lengths = _lengths(n, q.device, group)
    before = sum(lengths[:rank])
    xp = array_namespace(q)
    k_c, v_c = inp.k, inp.v
    gathered = []  # what every rank's backward pass must reach (see `_anchored`)
    if inp.logits is None:  # 1. the key sums before this slice
        sums = _gathered(k_c.sum(dim=-2).reshape(rows, -1), group)  # (P, R, D)
        gathered.append(sums)
        if causal:  # the running mean of the keys, from the key sum before the slice
            prior = sums[:rank].sum(dim=0).reshape(*inp.batch, -1)
            s = kernel.running_mean_logits(xp, k_c, prior, 1.0 + before)
            kernel.check_default_logits(xp, s, k_c, prior)
        else:  # the mean of every key of the sequence
            mean = sums.sum(dim=0).reshape(*inp.batch, 1, -1) / (1.0 + sum(lengths))
            s = -(k_c * mean).sum(dim=-1) / math.sqrt(k_c.shape[-1])
            kernel.check_default_logits(xp, s, k_c)
    else:
        s = inp.logits
    # 2. the slice's own state, from the empty state
    if n:
        mine = _pack(kernel.append(xp, empty, k_c, v_c, s), rows)
    else:  # the empty state, a function of the (empty) inputs all the same
        mine = _pack(empty, rows) + sum(_nothing_from(x).sum() for x in (k_c, v_c, s))
    # 3. every rank's state; 4. the exclusive merge, then the slice from it
    states = _gathered(mine, group)  # (P, R, width)
    gathered.append(states)
    pieces = [_unpack(states[j], empty, lengths[j]) for j in range(ranks)]
    if not causal:  # every query reads the whole sequence's state (spec 4.3)
        whole = kernel.merge_states(pieces)
        out = kernel.read_whole(xp, whole, inp.q, (inp.first, inp.higher, inp.zero))
        out = out.to(q.dtype)
        return _anchored(out, gathered) if n == 0 else out
    # Rank 0 starts empty, yet from the gathered tensor, so that every rank's backward pass
    # reaches the all-gather and joins its all-reduce (zero gradients, and no NaN from it).
    start = (kernel.merge_states(pieces[:rank]) if rank else
             _unpack(_nothing_from(states[0]), empty, 0))
    out = backend.attention(q, k, v, logits=s.to(q.dtype) if logits is None else logits,
                            first=first, higher=higher, zero=zero, state=start)
    if n == 0:
        out = _anchored(out, gathered)
    if not return_state:
        return out
    return out, kernel.merge_states(pieces)


def layer(x: torch.Tensor, params: Mapping[str, torch.Tensor], *, heads: int,
          first_layer: bool = False, rope: str | None = "half", norm: bool = True,
          group: Any = None, backend: Any = None) -> torch.Tensor:
    """The causal ZeroS layer (spec 13) of a sequence split over the ranks of `group`.

    x (*B, n_r, Dm) is this rank's slice, the r-th for rank r; the result is its slice of
    the layer's output. What the layer's glue reads of the prefix comes from the ranks
    before: the RoPE positions start at the rank's first token, and the deviation logits'
    prior takes the sum of the earlier slices' radial projections, ``(sum x) W_u + n b_u``
    by linearity (one differentiable all-gather of Dm numbers a row). The core runs as
    `attention` does. Parameters and options as `zeros_ref.layer`.
    """
    _SENT[0] = 0
    if backend is None:
        backend = _default_backend(x)
    batch, n, dm = tuple(x.shape[:-2]), x.shape[-2], x.shape[-1]
    d, rank = dm // heads, dist.get_rank(group)
    lengths = _lengths(n, x.device, group)
    before = sum(lengths[:rank])
    compute = torch.float32 if torch.finfo(x.dtype).bits < 32 else x.dtype
    sums = _gathered(x.to(compute).sum(dim=-2).reshape(-1, dm), group)  # (P, R, Dm)
    prior = sums[:rank].sum(dim=0) @ params["wu"].to(compute) + before * params["bu"].to(compute)
    u_sum = prior.reshape(*batch, heads, d)  # the radial projections before the slice
    empty = zeros_ref.State.empty(torch, (*batch, heads), d, d, dtype=compute, device=x.device)
    prefix = zeros_ref.LayerState(core=replace(empty, length=before), u_sum=u_sum)
    sent = _SENT[0]

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, state: Any,
             **options: Any) -> torch.Tensor:
        """The core over the ranks (the prefix's state comes from them, not from `state`)."""
        out = attention(q, k, v, group=group, backend=backend, **options)
        _SENT[0] += sent
        return out

    return zeros_ref.layer(x, params, heads=heads, causal=True, first_layer=first_layer,
                           rope=rope, norm=norm, state=prefix, attention=core)


def _default_backend(x: torch.Tensor) -> Any:
    """The torch backend of the tensor's device."""
    from zeros_backends.torch_backend import CudaTorchBackend, TorchBackend
    return TorchBackend() if x.device.type == "cpu" else CudaTorchBackend(str(x.device))

