"""What a torch call costs a GPU, measured on any machine: dispatched operations, host syncs
and the allocator's peak.

On a GPU each dispatched aten operation is at least one kernel launch, and each host sync
(`_local_scalar_dense`, `is_nonzero`, `item`: Python reading tensor data) drains the queue.
Counting them on CPU tensors shows what a CUDA run would pay, without a GPU. `peak_allocated`
is the largest sum of bytes allocated and not yet freed while a call runs (the CPU analogue
of ``torch.cuda.max_memory_allocated``), from the profiler's allocation events.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

__all__ = ["READS", "SYNCS", "count", "peak_allocated"]

SYNCS = ("_local_scalar_dense", "is_nonzero", "item")
"""The aten operations that read tensor data into Python."""


READS = ("tolist", "numpy")
"""Tensor methods that read tensor data into Python without dispatching an aten operation
(counted at the Python level, as host syncs too)."""


def count(fn: Callable[[], Any]) -> dict[str, int] | None:
    """``{"ops": n, "syncs": m}`` dispatched while ``fn()`` runs, or None without torch.

    Syncs are the dispatched `SYNCS` and the calls of the tensor methods `READS`."""
    try:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        return None
    reads = {getattr(torch.Tensor, name) for name in READS}

    class Counting(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    class Reading(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.reads = 0

        def __torch_function__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            self.reads += func in reads
            return func(*args, **(kwargs or {}))

    with Reading() as reading, Counting() as counter:
        fn()
    syncs = sum(counter.ops[s] for s in SYNCS) + reading.reads
    return {"ops": sum(counter.ops.values()), "syncs": syncs}


def peak_allocated(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch during ``fn()`` beyond those allocated before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak
