"""Dispatched operations and host syncs of a torch call: GPU-readiness on any machine.

On a GPU each dispatched aten operation is at least one kernel launch, and each host sync
(`_local_scalar_dense`, `is_nonzero`, `item`: Python reading tensor data) drains the queue.
Counting them on CPU tensors shows what a CUDA run would pay, without a GPU.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

__all__ = ["SYNCS", "count"]

SYNCS = ("_local_scalar_dense", "is_nonzero", "item")
"""The aten operations that read tensor data into Python."""


def count(fn: Callable[[], Any]) -> dict[str, int] | None:
    """``{"ops": n, "syncs": m}`` dispatched while ``fn()`` runs, or None without torch."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        return None

    class Counting(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Counting() as counter:
        fn()
    return {"ops": sum(counter.ops.values()), "syncs": sum(counter.ops[s] for s in SYNCS)}
