"""One rank of the context-parallel tests (tests/test_context_parallel.py): every case splits
one sequence over the ranks of a gloo group and compares this rank's outputs, the final
state and the gradients with one call on the whole sequence in this process."""

from __future__ import annotations

import datetime
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

import zeros_ref
from zeros_backends import context_parallel
from zeros_backends.torch_backend import TorchBackend, ZeroSAttention

FIELDS = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")


class Case(NamedTuple):
    """One sequence: the slice lengths (one per rank), default logits or not, the slice
    whose logits are shifted by `shift`, the dtype and the relative tolerance."""

    lengths: tuple[int, ...]
    default_logits: bool = False
    shifted: int | None = None
    shift: float = 0.0
    dtype: torch.dtype = torch.float64
    tolerance: float = 1e-10
    causal: bool = True
    offsets: tuple[int, ...] | None = None  # a packed batch over all ranks, from states


def cases(ranks: int) -> list[Case]:
    """The cases of a group of `ranks` ranks."""
    even = (24,) * ranks
    uneven = (10, 0, 50, 36)[:ranks] if ranks > 2 else (0, 70)
    return [Case(even), Case(uneven, shifted=ranks - 1, shift=1e4),
            Case(uneven, default_logits=True), Case(even, default_logits=True),
            Case(even, shifted=0, shift=1e4, dtype=torch.float32, tolerance=1e-4),
            Case(uneven, shifted=0, shift=1e4, causal=False),
            Case(uneven, default_logits=True, causal=False),
            Case(uneven, offsets=_packed(uneven)),
            Case(even, default_logits=True, offsets=_packed(even))]


def _packed(lengths: tuple[int, ...]) -> tuple[int, ...]:
    """Sequences over slices of `lengths`: an empty one, one that spans several ranks, short
    ones, one that ends on a rank's last token."""
    total = sum(lengths)
    return tuple(sorted([0, 3, 3, lengths[0], total // 2 + 1, total - 7, total]))


def _inputs(case: Case, seed: int) -> dict[str, torch.Tensor]:
    n = sum(case.lengths)
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = {"q": normal(2, n, 5), "k": normal(2, n, 5), "v": normal(2, n, 4),
         "first": 1.0 + 0.5 * normal(2, n), "cot": normal(2, n, 4)}
    if not case.default_logits:
        s = 3.0 * normal(2, n)
        if case.shifted is not None:
            a = sum(case.lengths[:case.shifted])
            s[:, a:a + case.lengths[case.shifted]] += case.shift
        x["logits"] = s
    return {name: t.to(case.dtype) for name, t in x.items()}


def _initial(case: Case, seed: int) -> Any:
    """Per-sequence initial states of a packed case (None for the others)."""
    if case.offsets is None:
        return None
    g = torch.Generator().manual_seed(seed + 1000)
    count = len(case.offsets) - 1
    prefix = torch.tensor([0] + [int(j % 3) * 4 for j in range(count)]).cumsum(0)
    n = int(prefix[-1])
    q, k, v = (torch.randn(2, n, dim, generator=g, dtype=torch.float64).to(case.dtype)
               for dim in (5, 5, 4))
    return zeros_ref.attention(q, k, v, cu_seqlens=prefix, return_state=True)[1]


def _run(backend: Any, x: dict[str, torch.Tensor], case: Case, initial: Any,
         group_call: bool) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
    """Outputs, state and gradients of `sum(out * cot)`."""
    leaves = {name: t.clone().requires_grad_(True) for name, t in x.items()
              if name in ("q", "k", "v", "logits")}
    causal = case.causal
    options = {"logits": leaves.get("logits"), "first": x["first"], "causal": causal,
               "return_state": causal}
    if case.offsets is not None:
        options.update(state=initial, cu_seqlens=torch.tensor(case.offsets))
    call = context_parallel.attention if group_call else backend.attention
    if group_call:
        options["backend"] = backend
    result = call(leaves["q"], leaves["k"], leaves["v"], **options)
    out, state = result if causal else (result, None)
    (out * x["cot"]).sum().backward()
    return out.detach(), state, {name: t.grad for name, t in leaves.items()}


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float) -> None:
    scale = float(want.abs().max()) if want.numel() else 0.0
    error = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    if not error <= tolerance * max(scale, 1.0):
        raise AssertionError(f"{name}: error {error:.3g}, scale {scale:.3g}")


def check(case: Case, rank: int, seed: int) -> int:
    """Compare this rank's slice with one call; return the bytes it sent."""
    backend = TorchBackend()
    x = _inputs(case, seed)
    initial = _initial(case, seed)
    a = sum(case.lengths[:rank])
    z = a + case.lengths[rank]
    mine = {name: t[:, a:z] for name, t in x.items()}
    out, state, grads = _run(backend, mine, case, initial, group_call=True)
    sent = context_parallel.bytes_sent()
    want_out, want_state, want_grads = _run(backend, x, case, initial, group_call=False)
    label = f"rank {rank} {case}"
    _close(f"{label} outputs", out, want_out[:, a:z], case.tolerance)
    for name, grad in grads.items():
        _close(f"{label} d{name}", grad, want_grads[name][:, a:z], case.tolerance)
    if not case.causal:
        return sent
    assert state.length == want_state.length, f"{label}: length {state.length}"
    for name in FIELDS:
        _close(f"{label} state {name}", getattr(state, name).detach(),
               getattr(want_state, name).detach(), case.tolerance)
    return sent


def check_layer(rank: int, lengths: tuple[int, ...], seed: int) -> None:
    """`ZeroSAttention` on this rank's slice with `cp_group` against the layer on the whole:
    outputs, the gradient of x, and the parameters' gradients summed over the ranks."""
    torch.manual_seed(seed)
    module = ZeroSAttention(8, 2, first_layer=True, seed=seed, dtype=torch.float64)
    x = torch.randn(2, sum(lengths), 8, dtype=torch.float64)
    cot = torch.randn_like(x)
    a = sum(lengths[:rank])
    z = a + lengths[rank]
    mine = x[:, a:z].clone().requires_grad_(True)
    out = module(mine, cp_group=dist.group.WORLD)
    (out * cot[:, a:z]).sum().backward()
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # empty slice
             for name, p in module.named_parameters()}
    for grad in grads.values():
        dist.all_reduce(grad)
    module.zero_grad()
    whole = x.clone().requires_grad_(True)
    want = module(whole)
    (want * cot).sum().backward()
    label = f"rank {rank} layer {lengths}"
    _close(f"{label} outputs", out.detach(), want.detach()[:, a:z], 1e-10)
    _close(f"{label} dx", mine.grad, whole.grad[:, a:z], 1e-10)
    for name, p in module.named_parameters():
        _close(f"{label} d{name}", grads[name], p.grad, 1e-10)


def main(rank: int, ranks: int, init_file: str, seed: int, lengths: tuple[int, ...]) -> None:
    """The spawned process: the cases, then the bytes sent at two slice lengths."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=ranks, timeout=datetime.timedelta(seconds=60))
    try:
        for j, case in enumerate(cases(ranks)):
            check(case, rank, seed + j)
            if j < 2:  # the layer over even slices, then uneven ones with an empty one
                check_layer(rank, case.lengths, seed + j)
        sent = []
        for n in lengths:  # the bytes of the forward pass, at slices of n tokens
            q = k = v = torch.zeros(2, n, 5, dtype=torch.float32)
            context_parallel.attention(q, k, v)
            sent.append(context_parallel.bytes_sent())
        if len(set(sent)) != 1:
            raise AssertionError(f"rank {rank} sent {sent} bytes at slices of {lengths} tokens")
    finally:
        dist.destroy_process_group()
