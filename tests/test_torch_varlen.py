"""The torch backend's packed calls (spec 5.2): the chunk plan, host syncs, no work per
sequence in Python. Agreement with the reference is the suite's (ZS-VARLEN-*, run by
tests/test_torch_backend.py); here are the properties of this implementation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zeros_backends.torch_backend import TorchBackend, chunk_plan  # noqa: E402
from zeros_backends.torch_backend.plan import dense_plan, segmented_scan  # noqa: E402
from zeros_bench import dispatch  # noqa: E402

backend = TorchBackend("cpu")


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)


def _packed(rng: np.random.Generator, lengths: list[int], rows: int = 2, d: int = 8):
    t = sum(lengths)
    q, k, v = (torch.tensor(rng.normal(size=(rows, t, d)), dtype=torch.float32)
               for _ in range(3))
    logits = torch.tensor(rng.normal(size=(rows, t)), dtype=torch.float32)
    return q, k, v, logits, _offsets(lengths)


def test_plan_never_lets_a_chunk_span_two_sequences() -> None:
    lengths = [3, 0, 70, 64, 1, 130, 0]
    plan = chunk_plan(_offsets(lengths), 64)
    assert plan.lengths == tuple(lengths)
    assert plan.chunks == sum(-(-n // 64) for n in lengths)
    token = plan.token.reshape(plan.chunks, 64)
    valid = plan.valid.reshape(plan.chunks, 64)
    offsets = _offsets(lengths)
    for c in range(plan.chunks):
        j = int(plan.segment[c])
        real = token[c][valid[c]]
        assert bool(((real >= offsets[j]) & (real < offsets[j + 1])).all())
    # every token has exactly one slot, and the slot holds it
    assert torch.equal(plan.token[plan.place], torch.arange(sum(lengths)))
    assert int(plan.valid.sum()) == sum(lengths)
    # the padding is at most C - 1 slots per sequence
    assert plan.chunks * 64 - sum(lengths) <= 63 * sum(n > 0 for n in lengths)
    assert plan.start.tolist() == [plan.segment[c] != plan.segment[c - 1] if c else True
                                   for c in range(plan.chunks)]


def test_dense_plan_is_one_padded_sequence() -> None:
    plan = dense_plan(130, 64, torch.device("cpu"))
    assert (plan.chunks, plan.count, plan.lengths) == (3, 1, (130,))
    assert plan.start.tolist() == [True, False, False]
    assert plan.end.tolist() == [False, False, True]
    assert int(plan.last[0]) == 129 and int(plan.valid.sum()) == 130


@pytest.mark.parametrize("combine", [torch.maximum, torch.add], ids=["max", "sum"])
def test_segmented_scan_restarts_at_every_start(combine, rng: np.random.Generator) -> None:
    x = torch.tensor(rng.normal(size=(3, 37)))
    start = torch.tensor(rng.random(37) < 0.3)
    start[0] = True
    got = segmented_scan(x, start, combine)
    want = x.clone()
    for c in range(1, 37):
        if not start[c]:
            want[:, c] = combine(want[:, c - 1], x[:, c])
    torch.testing.assert_close(got, want)


def _syncs(fn) -> int:
    return dispatch.count(fn)["syncs"]


@pytest.mark.parametrize("default_logits", [False, True], ids=["explicit", "default"])
def test_host_syncs_of_a_packed_call(default_logits: bool, rng: np.random.Generator) -> None:
    """Zero host syncs in the forward and backward of a packed call given its chunk plan, with
    and without per-sequence states; one (the read of cu_seqlens) without the plan."""
    lengths = [5, 0, 130, 1, 64, 40]
    q, k, v, logits, cu = _packed(rng, lengths)
    options = {} if default_logits else {"logits": logits}
    plan = chunk_plan(cu, backend.chunk_size)
    _, states = backend.attention(q, k, v, **options, cu_seqlens=cu, chunk_plan=plan,
                                  return_state=True)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]

    def forward(**kw):
        return backend.attention(*leaves, **options, cu_seqlens=cu, **kw)

    assert _syncs(lambda: forward()) == 1
    assert _syncs(lambda: forward(chunk_plan=plan)) == 0
    assert _syncs(lambda: forward(chunk_plan=plan, state=states, return_state=True)) == 0
    out, end = forward(chunk_plan=plan, state=states, return_state=True)
    loss = out.square().sum() + end.kv.square().sum()
    assert _syncs(lambda: loss.backward()) == 0
    assert all(x.grad is not None and bool(torch.isfinite(x.grad).all()) for x in leaves)


def test_no_work_per_sequence_in_python(rng: np.random.Generator) -> None:
    """4,096 one-token sequences (a batch of decode steps, each from its own state) cost a
    few hundred operations, not one or more per sequence."""
    lengths = [1] * 4096
    q, k, v, logits, cu = _packed(rng, lengths, rows=1, d=4)
    wide = TorchBackend("cpu", slab_size=4096)  # one slab: the operations of one step
    plan = chunk_plan(cu, wide.chunk_size)
    _, states = wide.attention(q, k, v, logits=logits, cu_seqlens=cu, chunk_plan=plan,
                               return_state=True)
    cost = dispatch.count(lambda: wide.attention(q, k, v, logits=logits, cu_seqlens=cu,
                                                 chunk_plan=plan, state=states,
                                                 return_state=True))
    assert cost["syncs"] == 0
    assert cost["ops"] < len(lengths) // 4, cost


def test_a_plan_must_fit_its_call(rng: np.random.Generator) -> None:
    q, k, v, _logits, cu = _packed(rng, [5, 7])
    plan = chunk_plan(cu, backend.chunk_size)
    with pytest.raises(ValueError, match="cu_seqlens"):
        backend.attention(q, k, v, chunk_plan=plan)
    with pytest.raises(ValueError, match="chunk_size"):
        backend.attention(q, k, v, cu_seqlens=cu, chunk_plan=chunk_plan(cu, 16))
    with pytest.raises(ValueError, match="2 sequences"):
        backend.attention(q, k, v, cu_seqlens=_offsets([5, 5, 2]), chunk_plan=plan)
    with pytest.raises(TypeError, match="ChunkPlan"):
        backend.attention(q, k, v, cu_seqlens=cu, chunk_plan=(0, 5, 12))
    with pytest.raises(ValueError, match="start at 0"):
        chunk_plan(torch.tensor([1, 12]), 64)
    with pytest.raises(TypeError, match="integer"):
        chunk_plan(torch.tensor([0.0, 12.0]), 64)
