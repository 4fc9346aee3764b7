"""Check context parallelism where it runs: ``torchrun --nproc-per-node P -m
zeros_backends.context_parallel_check``.

Every rank draws the same sequence, runs its slice with `context_parallel.attention` and the
whole sequence in one process, and rank 0 prints the largest error of the outputs and of
the gradients against the one-process call, over all ranks, and the time of a split call
against one process. gloo on CPUs, NCCL on GPUs (each rank on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from zeros_backends import context_parallel
from zeros_backends.torch_backend import CudaTorchBackend, TorchBackend


def _timed(fn: object, sync: object) -> float:
    """The least of 3 timings of ``fn()`` after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="length of the sequence")
    parser.add_argument("--rows", type=int, default=4, help="rows (batch x heads)")
    parser.add_argument("--dim", type=int, default=64, help="D = Dv")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    backend = CudaTorchBackend(str(device)) if cuda else TorchBackend()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    n, rows, d = args.tokens, args.rows, args.dim
    x = [torch.randn(rows, n, d, generator=g, dtype=torch.float64).to(device, dtype)
         for _ in range(4)]
    s = 3 * torch.randn(rows, n, generator=g, dtype=torch.float64).to(device, dtype)
    cuts = [n * j // ranks for j in range(ranks + 1)]
    a, z = cuts[rank], cuts[rank + 1]

    def run(split: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, k, v = (t[:, a:z] if split else t for t in x[:3])
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        logits = s[:, a:z] if split else s
        call = context_parallel.attention if split else backend.attention
        options = {"backend": backend} if split else {}
        out = call(*leaves, logits=logits, **options)
        (out * (x[3][:, a:z] if split else x[3])).sum().backward()
        return out.detach(), [t.grad for t in leaves]

    out, grads = run(split=True)
    whole, whole_grads = run(split=False)
    errors = torch.tensor([float((out - whole[:, a:z]).abs().max()),
                           max(float((gr - w[:, a:z]).abs().max())
                               for gr, w in zip(grads, whole_grads, strict=True))],
                          dtype=torch.float64, device=device)
    dist.all_reduce(errors, op=dist.ReduceOp.MAX)
    split_time = _timed(lambda: run(split=True), sync)
    one_time = _timed(lambda: run(split=False), sync) if rank == 0 else 0.0
    if rank == 0:
        print(f"context parallel: {ranks} ranks ({dist.get_backend()}) x {z - a} tokens, "
              f"against one process on {n} tokens; rows={rows} D=Dv={d} {args.dtype}")
        print(f"  largest error: outputs {errors[0]:.3g}, gradients {errors[1]:.3g} "
              f"(scale of outputs {float(whole.abs().max()):.3g})")
        print(f"  forward+backward: split {1e3 * split_time:.1f} ms per rank, one process "
              f"{1e3 * one_time:.1f} ms ({one_time / split_time:.2f}x)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
