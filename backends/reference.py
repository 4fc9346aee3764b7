"""The reference as a backend: `zeros_ref` on NumPy arrays (entry point ``reference``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import zeros_ref

__all__ = ["ReferenceBackend", "backend"]


class ReferenceBackend:
    """`zeros_ref.attention` and `zeros_ref.layer` behind the backend protocol of spec 10."""

    name = "reference"
    dtypes = ("float16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits", "layer", "varlen",
                          "merge"})
    device = "cpu"

    def from_numpy(self, x: np.ndarray, dtype: str) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        return zeros_ref.attention(q, k, v, **options)

    def layer(self, x: Any, params: Any, **options: Any) -> Any:
        return zeros_ref.layer(x, params, **options)

    def merge_states(self, states: Sequence[zeros_ref.State]) -> zeros_ref.State:
        return zeros_ref.merge_states(states)


backend = ReferenceBackend()
