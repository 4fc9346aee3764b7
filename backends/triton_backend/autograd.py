"""Gradients of the Triton form: a `torch.autograd.Function` whose forward runs the kernels
and whose backward recomputes the chunks with the torch form under autograd.

The backward is a first step (issue 15 allows it): it costs a torch forward and backward of
the default form, `zeros_backends.torch_backend.chunked.slabs`, on the same `Chunks` and with
the backend's slab size, so gradients equal the torch backend's (ZS-GRAD) while the forward
pass is the kernels'. A backward kernel is future work. The Function keeps the `Chunks` for
its backward (the vectors as the call gave them, not their unit directions, which the
recomputation takes again a slab at a time) and is differentiable once.
"""

from __future__ import annotations

from typing import Any

import torch

from zeros_backends.torch_backend import chunked
from zeros_backends.torch_backend.chunked import Chunks, Sums

from . import chunk

__all__ = ["form"]

_CHUNKS, _SUMS = Chunks._fields, Sums._fields
"""The names of the tensors `_ChunkedForm` takes, in the order it takes them."""


class _ChunkedForm(torch.autograd.Function):
    """Inputs: the products' precision, the slab size of the backward, then the tensors of
    `Chunks` and of `Sums` (named by `_CHUNKS` and `_SUMS`); outputs: the chunk outputs and
    the four sums after the last chunk (f, e, g, h)."""

    @staticmethod
    def forward(ctx: Any, precision: str, slab_size: int,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(*tensors)
        ctx.slab_size = slab_size
        chunks, sums = _named(tensors)
        out, after = chunk.forward(chunks, sums, precision=precision)
        return out, after.f, after.e, after.g, after.h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        wanted = ctx.needs_input_grad[2:]  # not the precision, not the slab size
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(need) for x, need in zip(saved, wanted)]
            chunks, sums = _named(leaves)
            out, after = chunked.slabs(chunks, sums, slab_size=ctx.slab_size)
            results = (out, after.f, after.e, after.g, after.h)
            pairs = [(y, dy) for y, dy in zip(results, cotangents)
                     if dy is not None and y.requires_grad]
            inputs = [x for x, need in zip(leaves, wanted) if need]
            if not pairs or not inputs:
                return (None,) * (2 + len(saved))
            found = iter(torch.autograd.grad([y for y, _ in pairs], inputs,
                                             [dy for _, dy in pairs], allow_unused=True))
        return (None, None, *(next(found) if need else None for need in wanted))


def _flat(chunks: Chunks, sums: Sums) -> list[torch.Tensor]:
    """The tensors of `chunks` and `sums`, named by `_CHUNKS` and `_SUMS`."""
    return [getattr(chunks, name) for name in _CHUNKS] + [getattr(sums, name) for name in _SUMS]


def _named(tensors: Any) -> tuple[Chunks, Sums]:
    """`Chunks` and `Sums` from the tensors of `_flat`, by name."""
    named = dict(zip((*_CHUNKS, *_SUMS), tensors))
    return (Chunks(**{name: named[name] for name in _CHUNKS}),
            Sums(**{name: named[name] for name in _SUMS}))


def form(chunks: Chunks, sums: Sums, *, precision: str = "ieee",
         slab_size: int = chunked.SLAB) -> tuple[torch.Tensor, Sums]:
    """The Triton backend's `chunked.Form` (with `precision` and `slab_size` bound): the
    kernels, differentiable in every tensor of `chunks` and `sums`.

    Parameters
    ----------
    chunks : Chunks
        float32 tensors on the kernels' device (see `chunk.forward`).
    sums : Sums
        The sums before the first chunk.
    precision : str
        The products' precision on a GPU, ``"ieee"`` or ``"tf32"`` (`chunk.forward`).
    slab_size : int
        Chunks per slab of the torch form that the backward pass recomputes with: the
        backend's `slab_size`.

    Returns
    -------
    out : torch.Tensor
        (R, nc, C, Dv) float32.
    sums : Sums
        The sums after the last chunk.
    """
    tensors = _flat(chunks, sums)
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in tensors):
        return chunk.forward(chunks, sums, precision=precision)
    out, f, e, g, h = _ChunkedForm.apply(precision, slab_size, *tensors)
    return out, Sums(f=f, e=e, g=g, h=h)
