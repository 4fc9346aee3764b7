"""Context parallelism: one sequence split over the ranks of a `torch.distributed` group
(spec 5.3).

Each rank holds a contiguous slice of the tokens, rank r the r-th slice, and gets the
outputs of its slice. Only states cross ranks, a few D x Dv matrices per row however long
the slices are:

1. one all-gather of the slice lengths; with default logits, one of the key sums of each
   rank's last piece (D numbers a row), from which each rank forms that piece's logits as
   one call on the whole would;
2. a state pass: the state of the rank's last piece from the empty state (`kernel.append`,
   no outputs);
3. one all-gather of the P states;
4. each rank merges the states of the earlier pieces of its first sequence
   (`kernel.merge_states`, the exclusive merge) and runs its slice from them with the
   backend's chunk form.

One sequence is the case of one piece per rank. In a packed batch (`cu_seqlens`, global
offsets) a sequence may span several ranks; a rank's last piece is the only one that can go
on, and its first sequence the only one that takes earlier pieces.

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
    """`out` made a function of the gathered tensors (with zero weight). The backward pass
    of every rank must reach every collective of the forward pass, whose backward is a
    collective too, in the same order: so the output depends on every collective's result,
    also where its values do not (an empty slice, a rank whose sequences all start on it),
    and each collective's input on the results of those before it."""
    return out + sum(_nothing_from(g).sum() for g in gathered)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              logits: torch.Tensor | None = None, first: Any = 1.0, higher: Any = 1.0,
              zero: Any = 0.0, causal: bool = True, group: Any = None,
              cu_seqlens: torch.Tensor | None = None, state: zeros_ref.State | None = None,
              return_state: bool = False, backend: Any = None) -> Any:
    """ZeroS attention of a sequence, or a packed batch, split over the ranks of `group`.

    Parameters
    ----------
    q, k : torch.Tensor
        (*B, n_r, D): this rank's slice, the r-th of the tokens for rank r of `group`.
    v : torch.Tensor
        (*B, n_r, Dv).
    logits, first, higher, zero
        As for `zeros_ref.attention`, this rank's slice of each ((*B, n_r) or a number);
        ``logits=None`` takes the default logits of the whole sequence.
    causal : bool
        Causal (spec 4.2), or bidirectional (spec 4.3: every query reads the merged state of
        the whole sequence; not with `cu_seqlens`, `state` or `return_state`).
    group : ProcessGroup or None
        The ranks that share the tokens; None: the default group.
    cu_seqlens : torch.Tensor or None
        (S + 1,) integer offsets of S sequences packed along the whole time axis (spec 5.2),
        the same on every rank; a sequence may span several ranks.
    state : State or None
        The initial state (leading axes *B), or one per sequence ((S, *B), with
        `cu_seqlens`), the same on every rank.
    return_state : bool
        Also return the state after the whole sequence, or every sequence's final state (the
        same on every rank).
    backend : TorchBackend or None
        What computes the slice; None: the torch backend of the tensors' device.

    Returns
    -------
    torch.Tensor, or (torch.Tensor, State)
        This rank's outputs (*B, n_r, Dv), and with `return_state` the final state(s).
    """
    if not causal and (return_state or state is not None or cu_seqlens is not None):
        raise ValueError("`state`, `return_state` and `cu_seqlens` need causal=True here")
    if backend is None:
        backend = _default_backend(q)
    _SENT[0] = 0
    # (validated as causal whatever the mode, for the empty state its pieces start from)
    inp, empty = kernel.check_call(q, k, v, logits=logits, first=first, higher=higher,
                                   zero=zero, causal=True, state=None, return_state=True)
    rows, n = math.prod(inp.batch), inp.n
    ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    lengths = _lengths(n, q.device, group)
    ends = [sum(lengths[:j + 1]) for j in range(ranks)]  # each rank's end on the time axis
    before = ends[rank] - n
    packed = cu_seqlens is not None
    offsets = kernel.host_offsets(cu_seqlens) if packed else (0, ends[-1])
    if offsets[-1] != ends[-1]:
        raise ValueError(f"`cu_seqlens` must end at the ranks' {ends[-1]} tokens in all; got "
                         f"{offsets[-1]}")
    plan = _Plan(offsets, ends)
    initial = _Initial(state, empty, packed)
    xp = array_namespace(q)
    gathered = []  # what every rank's backward pass must reach (see `_anchored`)
    last = plan.last[rank]  # this rank's last sequence, whose piece may go on (or None)
    tail = slice(max(offsets[last], before) - before, n) if last is not None else slice(0, 0)
    k_t, v_t = inp.k[..., tail, :], inp.v[..., tail, :]
    if inp.logits is None:  # 1. the key sums of the ranks' last pieces: the prior of mine
        sums = _gathered(k_t.sum(dim=-2).reshape(rows, -1), group)  # (P, R, D)
        gathered.append(sums)
        if not causal:  # the mean of every key of the sequence
            mean = sums.sum(dim=0).reshape(*inp.batch, 1, -1) / (1.0 + ends[-1])
            s_t = -(k_t * mean).sum(dim=-1) / math.sqrt(k_t.shape[-1])
            kernel.check_default_logits(xp, s_t, k_t)
        else:  # the running mean of the keys, from the key sum before the last piece
            prior = initial.of(last) if last is not None else empty
            earlier = plan.earlier(rank, last)
            prior_sum = prior.key_sum + sums[earlier].sum(dim=0).reshape(prior.key_sum.shape)
            count = prior.length + sum(plan.piece(j) for j in earlier)
            s_t = kernel.running_mean_logits(xp, k_t, prior_sum, 1.0 + count)
            kernel.check_default_logits(xp, s_t, k_t, prior_sum)
    else:
        s_t = inp.logits[..., tail]
    # 2. the state of this rank's last piece, from the empty state
    if tail.stop > tail.start:
        mine = _pack(kernel.append(xp, empty, k_t, v_t, s_t), rows)
    else:  # the empty state, a function of the (empty) inputs all the same
        mine = _pack(empty, rows) + sum(_nothing_from(x).sum() for x in (k_t, v_t, s_t))
    # 3. every rank's last piece; 4. the pieces of this rank's first sequence before it
    states = _gathered(_anchored(mine, gathered), group)  # (P, R, width)
    gathered.append(states)
    pieces = [_unpack(states[j], empty, plan.piece(j)) for j in range(ranks)]
    if not causal:  # every query reads the whole sequence's state (spec 4.3)
        whole = kernel.merge_states(pieces)
        out = kernel.read_whole(xp, whole, inp.q, (inp.first, inp.higher, inp.zero))
        return _anchored(out.to(q.dtype), gathered)
    local = plan.local(rank)  # the sequences this rank holds tokens of
    starts = [initial.of(j) for j in local]
    if local:
        starts[0] = kernel.merge_states([starts[0], *(pieces[j] for j in
                                                      plan.earlier(rank, local[0]))])
    options = {"logits": logits, "first": first, "higher": higher, "zero": zero}
    if not packed:
        out = backend.attention(q, k, v, **options, state=starts[0] if local else empty,
                                return_state=return_state)
    elif local:
        cut = [max(offsets[j], before) - before for j in local] + [n]
        out = backend.attention(q, k, v, **options, state=zeros_ref.State.stack(torch, starts),
                                cu_seqlens=torch.tensor(cut, device=q.device),
                                return_state=return_state)
    else:
        out = (inp.v[..., :0, :].to(q.dtype), None)
    out, finals = out if return_state else (out, None)
    out = _anchored(out, gathered)
    if not return_state:
        return out
    if not packed:  # the whole sequence's state: every piece merged
        return out, kernel.merge_states([initial.of(0), *pieces])
    return _final_states(out, finals, plan, initial, rank, group, gathered)


class _Plan:
    """Where the sequences of `offsets` lie across ranks ending at `ends` (time axis)."""

    def __init__(self, offsets: tuple[int, ...], ends: list[int]) -> None:
        self.offsets, self.ends = offsets, ends
        self.last = [self._last(r) for r in range(len(ends))]

    def _bounds(self, r: int) -> tuple[int, int]:
        return (self.ends[r - 1] if r else 0), self.ends[r]

    def local(self, r: int) -> list[int]:
        """The sequences with tokens on rank r, in order."""
        lo, hi = self._bounds(r)
        o = self.offsets
        return [j for j in range(len(o) - 1) if o[j] < hi and o[j + 1] > lo]

    def _last(self, r: int) -> int | None:
        local = self.local(r)
        return local[-1] if local else None

    def piece(self, r: int) -> int:
        """The tokens of rank r's last piece."""
        j = self.last[r]
        lo, hi = self._bounds(r)
        return 0 if j is None else hi - max(self.offsets[j], lo)

    def earlier(self, r: int, j: int | None) -> list[int]:
        """The ranks before r whose last piece is of sequence j (they hold its start)."""
        return [p for p in range(r) if j is not None and self.last[p] == j]

    def owner(self, j: int) -> int:
        """The rank that holds sequence j's last token (rank 0 for an empty sequence)."""
        o = self.offsets
        if o[j + 1] == o[j]:
            return 0
        return next(r for r in range(len(self.ends)) if self.ends[r] >= o[j + 1])


class _Initial:
    """The initial state of each sequence: the given one, or the empty state."""

    def __init__(self, state: zeros_ref.State | None, empty: zeros_ref.State,
                 packed: bool) -> None:
        self.state, self.empty, self.packed = state, empty, packed

    def of(self, j: int) -> zeros_ref.State:
        if self.state is None:
            return self.empty
        return self.state.sequence(j) if self.packed else self.state


def _final_states(out: torch.Tensor, finals: zeros_ref.State | None, plan: _Plan,
                  initial: _Initial, rank: int, group: Any,
                  gathered: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Every sequence's final state on every rank: each from the rank that holds its last
    token (one differentiable all-reduce of S states), the empty ones their initial state."""
    local, count = plan.local(rank), len(plan.offsets) - 1
    empty, rows = initial.empty, math.prod(initial.empty.running_max.shape)
    mine = [_pack(empty, rows) for _ in range(count)]  # zeros where another rank owns it
    for j in range(count):
        if plan.owner(j) == rank:  # a sequence that ends here, or an empty one (rank 0)
            mine[j] = _pack(finals.sequence(local.index(j)) if j in local else initial.of(j),
                            rows)
    mine = _anchored(torch.stack(mine), gathered)
    total = _AllReduce.apply(mine, group)
    _SENT[0] += total.numel() * total.element_size()
    sizes = [plan.offsets[j + 1] - plan.offsets[j] for j in range(count)]
    states = [_unpack(total[j], empty, initial.of(j).length + sizes[j]) for j in range(count)]
    return _anchored(out, [total]), zeros_ref.State.stack(torch, states)


class _AllReduce(torch.autograd.Function):
    """``all_reduce`` (sum), differentiable: the gradient of each rank's term is the sum over
    ranks of the gradients of the total."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = x.contiguous().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


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

