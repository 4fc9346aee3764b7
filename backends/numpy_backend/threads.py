"""Row groups and the worker threads that run them.

The flattened batch axis of R rows is split into contiguous groups, one per worker thread
(NumPy and BLAS release the GIL); each worker issues single-threaded BLAS calls on its
(R / workers, chunks, C, .) stacks.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from zeros_machine import blas_threads

__all__ = ["map_groups", "row_groups"]

_POOL: ThreadPoolExecutor | None = None


def row_groups(nrows: int, workers: int) -> list[slice]:
    """Contiguous ranges of the `nrows` rows, one per worker."""
    bounds = np.linspace(0, nrows, workers + 1).round().astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def map_groups(fn: Callable[[slice], Any], groups: list[slice], *,
               single_blas: bool) -> list[Any]:
    """``fn`` on every row group, on worker threads when there are several.

    With `single_blas` BLAS runs one thread per call during the work: the products are
    small (at most C x (C + 3D) by (C + 3D) x Dv), and a BLAS that splits them between
    threads spends more time waking its threads than computing (measured: the reference's
    chunk products run 3-10x slower with two OpenBLAS threads than with one on a 2-CPU VM).
    """
    global _POOL
    with blas_threads(1) if single_blas else contextlib.nullcontext():
        if len(groups) == 1:
            return [fn(groups[0])]
        if _POOL is None or _POOL._max_workers < len(groups):
            _POOL = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="zeros-numpy")
        return [f.result() for f in [_POOL.submit(fn, g) for g in groups]]
