"""The Triton backend (entry point ``triton``): the chunked causal form of spec 4.2 as two
Triton kernels, everything around it the torch backend's.

It must equal the reference form, `zeros_ref.attention`, to the tolerance of spec 7.1. The
torch chunk form (`zeros_backends.torch_backend.chunked`) computes the frames, the default
logits, the non-finite handling (once, before any form) and the `State`, and hands the chunks
of a causal call to a `Form`; this backend passes its own, `autograd.form`, which runs the
kernels of `chunk` (float32 accumulation) on the unit directions and finite values of the
whole call (`Chunks.vectors`). What stays on the torch path:

- float64 inputs (the kernels compute in float32; float16, bfloat16 and float32 inputs run
  the kernels in float32, as the reference computes half precision, ZS-DTYPE-HALF; on a GPU
  the products of half-precision calls use TF32);
- the bidirectional form (spec 4.3), one whole-sequence state read by every row;
- the backward pass: `autograd` recomputes the chunks with the torch form under autograd
  (the default form, `slab_size` chunks a slab), so gradients (ZS-GRAD) are the torch
  backend's; a backward kernel is future work.

Device: with ``TRITON_INTERPRET=1`` in the environment (set before Python starts: Triton
reads it when the kernels are defined, on first use, and again when they first run), Triton's
interpreter runs the kernels on CPU tensors (slowly, one fixed tile configuration); without
it they run on CUDA tensors. Constructing the backend imports neither Triton nor a GPU
driver; its first use raises a `RuntimeError` that says what is missing.

Layout
------
``chunk``      the two kernels (`chunk.forward`, a `Form` without autograd)
``autograd``   the `torch.autograd.Function` around them (`autograd.form`)
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

from zeros_backends.torch_backend import CudaTorchBackend, TorchBackend, chunked
from zeros_ref import kernel

__all__ = ["CHUNK_SIZE", "CudaTritonBackend", "TritonBackend", "backend", "interpreting"]

CHUNK_SIZE = 64
"""Default chunk length C on both devices (a power of two, at least 16, as the kernels'
blocks must be); speed only, any C gives the same result."""


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (read as Triton 3.9 reads
    it: 1, y, yes, on or true, in any case)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in {"1", "y", "yes", "on", "true"}


class TritonBackend(TorchBackend):
    """`zeros_ref.attention` with the causal chunks in Triton kernels, behind the protocol of
    spec 10 (torch tensors in and out).

    Parameters
    ----------
    device : str or None
        ``"cpu"`` (the kernels run in Triton's interpreter: needs ``TRITON_INTERPRET=1``) or a
        CUDA device; None takes ``"cpu"`` when ``TRITON_INTERPRET=1`` is set, else ``"cuda"``.
        On CUDA, `CudaTritonBackend` adds `memory_peak` (which this class has on no device).
    name : str
        The name in reports.
    chunk_size : int
        Chunk length C, a power of two >= 16.
    slab_size : int or None
        Chunks per slab of the torch form (float64, and the backward pass); None takes the
        torch backend's `SLAB_SIZE` of the device type.

    Examples
    --------
    >>> b = TritonBackend()  # needs TRITON_INTERPRET=1 or a CUDA device on first use
    >>> b.name, b.chunk_size
    ('triton', 64)
    """

    def __init__(self, device: str | None = None, *, name: str = "triton",
                 chunk_size: int = CHUNK_SIZE, slab_size: int | None = None) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
            raise ValueError(f"`chunk_size` must be a power of two >= 16; got {chunk_size!r}")
        if device is None:
            device = "cpu" if interpreting() else "cuda"
        super().__init__(device, name=name, chunk_size=chunk_size, slab_size=slab_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.device!r}, name={self.name!r}, "
                f"chunk_size={self.chunk_size}, slab_size={self.slab_size})")

    def _ready(self) -> None:
        self._form()

    def _form(self) -> Callable[..., Any]:
        """The kernels' `Form`, once Triton and a place to run them are found; else a
        `RuntimeError` that says what is missing."""
        if importlib.util.find_spec("triton") is None:
            raise RuntimeError(f"backend {self.name!r} needs Triton: pip install "
                               "'zeros-attention-spec[triton]'")
        if self._cuda and not torch.cuda.is_available():
            raise RuntimeError(
                f"backend {self.name!r} runs its kernels on a CUDA device, but "
                "torch.cuda.is_available() is False; to run them on CPU tensors in Triton's "
                "interpreter, set TRITON_INTERPRET=1 before starting Python")
        from . import autograd, chunk  # triton.jit decides here, once, whether to interpret

        if not self._cuda and not (chunk.INTERPRETED and interpreting()):
            raise RuntimeError(f"backend {self.name!r} on the CPU needs Triton's interpreter: "
                               "set TRITON_INTERPRET=1 before starting Python (and keep it)")
        if self._cuda and chunk.INTERPRETED:
            raise RuntimeError(f"backend {self.name!r} on {self.device!r}: the kernels were "
                               "defined for Triton's interpreter (TRITON_INTERPRET=1 when "
                               "they were imported), which runs them on CPU tensors")
        return autograd.form

    def _chunk_form(self, inp: kernel.Inputs, causal: bool) -> chunked.Form | None:
        """The kernels for the causal chunks of float16, bfloat16 and float32 calls (computed
        in float32; their backward recomputes with this backend's `slab_size`); None (the
        torch form) for float64 and bidirectional calls."""
        if not causal or inp.compute_dtype != torch.float32:
            return None
        kernels = self._form()
        if inp.q.device.type != torch.device(self.device).type:
            raise ValueError(f"`q` must be on the backend's device {self.device!r}; got "
                             f"{inp.q.device}")
        # TF32 products for half inputs: their own rounding is coarser (see chunk.forward).
        precision = "ieee" if inp.dtype == torch.float32 else "tf32"
        return functools.partial(kernels, precision=precision, slab_size=self.slab_size)


class CudaTritonBackend(TritonBackend, CudaTorchBackend):
    """`TritonBackend` on a CUDA device, with `memory_peak`, the device-memory measure of
    ZS-ON-MEMORY (`CudaTorchBackend.memory_peak`).

    Parameters
    ----------
    device : str
        A CUDA device, ``"cuda"`` or ``"cuda:<index>"``.
    name, chunk_size, slab_size
        As for `TritonBackend`.
    """

    def __init__(self, device: str = "cuda", *, name: str = "triton",
                 chunk_size: int = CHUNK_SIZE, slab_size: int | None = None) -> None:
        super().__init__(device, name=name, chunk_size=chunk_size, slab_size=slab_size)


backend = TritonBackend() if interpreting() else CudaTritonBackend()
"""Entry point ``triton``: CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1``,
else CUDA tensors (with `memory_peak`)."""
