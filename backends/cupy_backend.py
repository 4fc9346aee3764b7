"""The CuPy backend: the array-API chunk form on CuPy arrays (entry point ``cupy``).

It must equal the reference form, `zeros_ref.attention` (spec 4.2, 4.3), and runs the
array-API chunk form (`zeros_backends.array_api`, whose docstring explains it) on CuPy arrays
of the current device: every chunk of a slab in a few large operations, the slabs in a loop
whose length is a shape (no chunk loop, no branch on array values), so the GPU never waits
for the host within a call. The host reads one value per call only where default logits
are used (whether they left the dtype's range, the error of spec 8), and the offsets of a
packed call's `cu_seqlens` once. Validation (spec 8) is the reference's
(`zeros_ref.kernel.check_call`); float16 inputs are computed in float32 (ZS-DTYPE-HALF). For
ZS-ON-MEMORY this module reports the peak of CuPy's memory pool (the process's resident size
does not see device memory).

CuPy is imported on first use, so this module (and the entry point) loads on a machine without
CuPy or a GPU; the first `from_numpy` then fails with a `RuntimeError` that says why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import zeros_ref
from zeros_ref import kernel

from . import array_api

__all__ = ["CHUNK_SIZE", "SLAB_SIZE", "CupyBackend", "backend"]

CHUNK_SIZE = 64
"""Default chunk length C."""
SLAB_SIZE = 32
"""Default chunks computed at once: a GPU wants few, large operations."""


@functools.cache
def _cupy() -> Any:
    """The `cupy` module, once a device is found; `RuntimeError` naming what is missing (not
    cached: a failure is retried on the next call)."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "the cupy backend needs CuPy (pip install 'zeros-attention-spec[cupy]') and a CUDA "
            f"GPU; importing cupy failed: {exc}"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise RuntimeError(f"the cupy backend found no usable CUDA device: {exc}") from exc
    if count < 1:
        raise RuntimeError("the cupy backend found no CUDA device")
    return cupy


class CupyBackend:
    """`zeros_ref.attention` on CuPy arrays of the current device, behind the protocol of
    spec 10.

    Parameters
    ----------
    chunk_size : int
        Chunk length C of the chunked form (speed only; any C gives the same result).
    slab_size : int
        Chunks computed at once.
    """

    name = "cupy"
    dtypes = ("float16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits", "varlen", "merge"})
    device = "cuda"
    index_dtypes = ("int32", "int64")
    """Integer dtypes `from_numpy` takes too: those of ``cu_seqlens``."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, slab_size: int = SLAB_SIZE) -> None:
        self.chunk_size = chunk_size
        self.slab_size = slab_size

    def __repr__(self) -> str:
        return f"CupyBackend(chunk_size={self.chunk_size}, slab_size={self.slab_size})"

    def from_numpy(self, x: np.ndarray, dtype: str) -> Any:
        """`x` rounded to dtype name `dtype` (by numpy, once) on the current device (a floating
        dtype of `dtypes`, or an integer one of `index_dtypes`)."""
        if dtype not in (*self.dtypes, *self.index_dtypes):
            raise TypeError(f"`dtype` must be one of {self.dtypes}; got {dtype!r}")
        return _cupy().asarray(np.asarray(x, dtype=dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        """A numpy copy of the CuPy array `x`."""
        return _cupy().asnumpy(x)

    def attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        logits: Any = None,
        first: Any = 1.0,
        higher: Any = 1.0,
        zero: Any = 0.0,
        causal: bool = True,
        state: zeros_ref.State | None = None,
        return_state: bool = False,
        cu_seqlens: Any = None,
    ) -> Any:
        """ZeroS attention on CuPy arrays by the array-API chunk form.

        Arguments, result and errors are those of `zeros_ref.attention` (spec sections 2-8,
        packed sequences 5.2).
        """
        inp, start = kernel.check_call(q, k, v, logits=logits, first=first, higher=higher,
                                       zero=zero, causal=causal, state=state,
                                       return_state=return_state, cu_seqlens=cu_seqlens)
        out, end = array_api.attention(inp, start, causal=causal, return_state=return_state,
                                       chunk=self.chunk_size, slab=self.slab_size)
        return (out, end) if return_state else out

    def merge_states(self, states: Sequence[zeros_ref.State]) -> zeros_ref.State:
        """The state of the concatenation of pieces from their states (spec 5.3): the
        reference's merge on CuPy arrays."""
        return zeros_ref.merge_states(states)

    def synchronize(self) -> None:
        """Wait for the GPU's queued work (for timings)."""
        _cupy().cuda.Device().synchronize()

    def memory_peak(self, fn: Callable[[], Any]) -> int:
        """Peak bytes taken from CuPy's memory pool while ``fn()`` runs, beyond those in use
        before it (ZS-ON-MEMORY).

        Counted by a `cupy.cuda.MemoryHook` on the pool's malloc and free, so it needs CuPy's
        memory pool as the allocator (the default); with another allocator the hook sees no
        allocation, which would read as zero memory, so that raises `RuntimeError`.
        """
        cupy = _cupy()
        hook = _peak_hook(cupy)
        cupy.cuda.Device().synchronize()
        with hook:
            result = fn()
            cupy.cuda.Device().synchronize()
        del result
        if not hook.mallocs:
            raise RuntimeError("memory_peak saw no allocation from CuPy's memory pool; is "
                               "another allocator set (cupy.cuda.set_allocator)?")
        return hook.peak


def _peak_hook(cupy: Any) -> Any:
    """A memory hook (its class needs cupy) that follows the bytes in use from the pool and
    keeps their maximum."""

    class PeakHook(cupy.cuda.MemoryHook):
        name = "zeros_memory_peak"

        def __init__(self) -> None:
            self.in_use = 0  # bytes, relative to those in use when the hook was made
            self.peak = 0
            self.mallocs = 0

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.mallocs += 1
            self.in_use += kwargs["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.in_use -= kwargs["mem_size"]

    return PeakHook()


backend = CupyBackend()
"""Entry point ``cupy``: arrays on the current CUDA device (CuPy is imported on first use)."""
