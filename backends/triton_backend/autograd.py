"""Gradients of the Triton form: a `torch.autograd.Function` whose forward runs the kernels
and whose backward recomputes the chunks with the torch form under autograd.

The backward is a first step (issue 15 allows it): it costs a torch forward and backward of
`zeros_backends.torch_backend.chunked.slabs` on the same `Chunks`, so gradients equal the torch
backend's (ZS-GRAD) while the forward pass is the kernels'. A backward kernel is future work.
The Function keeps the `Chunks` for its backward (about the inputs' size in float32) and is
differentiable once.
"""

from __future__ import annotations

from typing import Any

import torch

from zeros_backends.torch_backend import chunked
from zeros_backends.torch_backend.chunked import Chunks, Sums

from . import chunk

__all__ = ["form"]

_FIELDS = len(Chunks._fields)


class _ChunkedForm(torch.autograd.Function):
    """Inputs: the products' precision, the fields of `Chunks`, then those of `Sums`; outputs:
    the chunk outputs and the four sums after the last chunk."""

    @staticmethod
    def forward(ctx: Any, precision: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(*tensors)
        out, after = chunk.forward(Chunks(*tensors[:_FIELDS]), Sums(*tensors[_FIELDS:]),
                                   precision=precision)
        return (out, *after)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]  # not the precision
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(need) for x, need in zip(saved, wanted)]
            out, after = chunked.slabs(Chunks(*leaves[:_FIELDS]), Sums(*leaves[_FIELDS:]))
            pairs = [(y, dy) for y, dy in zip((out, *after), cotangents)
                     if dy is not None and y.requires_grad]
            inputs = [x for x, need in zip(leaves, wanted) if need]
            if not pairs or not inputs:
                return (None,) * (1 + len(saved))
            found = iter(torch.autograd.grad([y for y, _ in pairs], inputs,
                                             [dy for _, dy in pairs], allow_unused=True))
        return (None, *(next(found) if need else None for need in wanted))


def form(chunks: Chunks, sums: Sums, *, precision: str = "ieee") -> tuple[torch.Tensor, Sums]:
    """The Triton backend's `chunked.Form` (with `precision` bound, see
    `chunk.forward`): the kernels, differentiable in every tensor of `chunks` and `sums` (the
    backward recomputes with the torch form)."""
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in (*chunks, *sums)):
        return chunk.forward(chunks, sums, precision=precision)
    out, *after = _ChunkedForm.apply(precision, *chunks, *sums)
    return out, Sums(*after)
