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
from zeros_backends.torch_backend.chunked import Chunks, Sequences, Sums
from zeros_backends.torch_backend.slab import TENSORS

from . import chunk

__all__ = ["form"]

_CHUNKS, _SUMS = TENSORS, Sums._fields
"""The names of the tensors `_ChunkedForm` takes, in the order it takes them: the chunks,
then the initial sums where there are any."""


class _ChunkedForm(torch.autograd.Function):
    """Inputs: the products' precision, the slab size of the backward, S, whether the final
    sums are wanted, whether initial sums follow, the chunks' bounds (`Chunks.bounds`), then
    the tensors of `Chunks` and of the initial `Sums` (named by `_CHUNKS` and `_SUMS`);
    outputs: the token outputs and the four final sums (f, e, g, h; empty tensors when not
    wanted)."""

    @staticmethod
    def forward(ctx: Any, precision: str, slab_size: int, count: int, finals: bool,
                has_init: bool, bounds: tuple[int, ...],
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(*tensors)
        ctx.options = (slab_size, count, finals, has_init, bounds)
        chunks, sequences = _named(tensors, count, finals, has_init, bounds)
        out, after = chunk.forward(chunks, sequences, precision=precision)
        if after is None:
            return (out, *(out.new_empty(0) for _ in _SUMS))
        return out, after.f, after.e, after.g, after.h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        slab_size, count, finals, has_init, bounds = ctx.options
        skipped = 6  # precision, slab size, S, finals, has_init, bounds
        wanted = ctx.needs_input_grad[skipped:]
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(need) for x, need in zip(saved, wanted)]
            chunks, sequences = _named(leaves, count, finals, has_init, bounds)
            out, after = chunked.slabs(chunks, sequences, slab_size=slab_size)
            results = (out,) if after is None else (out, after.f, after.e, after.g, after.h)
            pairs = [(y, dy) for y, dy in zip(results, cotangents)
                     if dy is not None and y.requires_grad]
            inputs = [x for x, need in zip(leaves, wanted) if need]
            if not pairs or not inputs:
                return (None,) * (skipped + len(saved))
            found = iter(torch.autograd.grad([y for y, _ in pairs], inputs,
                                             [dy for _, dy in pairs], allow_unused=True))
        return (*(None,) * skipped, *(next(found) if need else None for need in wanted))


def _flat(chunks: Chunks, sequences: Sequences) -> list[torch.Tensor]:
    """The tensors of `chunks` and of the initial sums, named by `_CHUNKS` and `_SUMS`."""
    init = [] if sequences.init is None else [getattr(sequences.init, n) for n in _SUMS]
    return [getattr(chunks, name) for name in _CHUNKS] + init


def _named(tensors: Any, count: int, finals: bool, has_init: bool,
           bounds: tuple[int, ...]) -> tuple[Chunks, Sequences]:
    """`Chunks` (with their `bounds`) and `Sequences` from the tensors of `_flat`, by name."""
    named = dict(zip((*_CHUNKS, *_SUMS), tensors))
    init = Sums(**{name: named[name] for name in _SUMS}) if has_init else None
    return (Chunks(**{name: named[name] for name in _CHUNKS}, bounds=bounds),
            Sequences(init=init, count=count, finals=finals))


def form(chunks: Chunks, sequences: Sequences, *, precision: str = "ieee",
         slab_size: int = chunked.SLAB) -> tuple[torch.Tensor, Sums | None]:
    """The Triton backend's `chunked.Form` (with `precision` and `slab_size` bound): the
    kernels, differentiable in every tensor of `chunks` and of the initial sums.

    Parameters
    ----------
    chunks : Chunks
        float32 tensors on the kernels' device (see `chunk.forward`).
    sequences : Sequences
        The sequences' initial sums (or None), their number, whether final sums are wanted.
    precision : str
        The products' precision on a GPU, ``"ieee"`` or ``"tf32"`` (`chunk.forward`).
    slab_size : int
        Chunks per slab of the torch form that the backward pass recomputes with: the
        backend's `slab_size`.

    Returns
    -------
    out : torch.Tensor
        (R, N, Dv) float32, the outputs of the tokens.
    finals : Sums or None
        The sums after each sequence's last chunk, if ``sequences.finals``.
    """
    tensors = _flat(chunks, sequences)
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in tensors):
        return chunk.forward(chunks, sequences, precision=precision)
    out, f, e, g, h = _ChunkedForm.apply(precision, slab_size, sequences.count,
                                         sequences.finals, sequences.init is not None,
                                         chunks.bounds, *tensors)
    return out, (Sums(f=f, e=e, g=g, h=h) if sequences.finals else None)
