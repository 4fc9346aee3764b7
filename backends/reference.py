"""The reference as a backend: `zeros_ref` on NumPy arrays (entry point ``reference``)."""

from __future__ import annotations

from typing import Any

import numpy as np

import zeros_ref

__all__ = ["ReferenceBackend", "backend"]


class ReferenceBackend:
    """`zeros_ref.attention` behind the backend protocol of spec section 10."""

    name = "reference"
    dtypes = ("float16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits"})
    device = "cpu"

    def from_numpy(self, x: np.ndarray, dtype: str) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        return zeros_ref.attention(q, k, v, **options)


backend = ReferenceBackend()
