"""The CuPy backend: `zeros_ref` on CuPy arrays (entry point ``cupy``).

One algorithm, the reference's: through `array_api_compat`, `zeros_ref` runs unchanged on
CuPy arrays, so validation (spec section 8), the chunked form of spec 4.2 and 4.3, the `State`
of section 5, the default logits and the float32 computation of float16 inputs
(ZS-DTYPE-HALF) are the reference's own. This module adds the device's chunk length and, for
ZS-ON-MEMORY, the peak of CuPy's memory pool (the process's resident size does not see device
memory).

CuPy is imported on first use, so this module (and the entry point) loads on a machine without
CuPy or a GPU; the first `from_numpy` then fails with a `RuntimeError` that says why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

import zeros_ref

__all__ = ["CHUNK_SIZE", "CupyBackend", "backend"]

CHUNK_SIZE = 256
"""Default chunk length C: a GPU pays a fixed launch cost per chunk, so it takes long chunks."""


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
    """

    name = "cupy"
    dtypes = ("float16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits"})
    device = "cuda"

    def __init__(self, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"CupyBackend(chunk_size={self.chunk_size})"

    def from_numpy(self, x: np.ndarray, dtype: str) -> Any:
        """`x` rounded to dtype name `dtype` (by numpy, once) on the current device."""
        if dtype not in self.dtypes:
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
    ) -> Any:
        """ZeroS attention on CuPy arrays: `zeros_ref.attention` with this chunk length.

        Arguments, result and errors are those of `zeros_ref.attention` (spec sections 2-8).
        """
        return zeros_ref.attention(
            q, k, v, logits=logits, first=first, higher=higher, zero=zero, causal=causal,
            state=state, return_state=return_state, chunk_size=self.chunk_size,
        )

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
