"""The conversion half of the protocol for NumPy-based test backends."""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyArrays:
    """from_numpy / to_numpy for backends computing on NumPy arrays."""

    dtypes = ("float32", "float64")
    device = "cpu"

    def from_numpy(self, x: np.ndarray, dtype: str) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit length, zero rows kept zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def gate(g: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A gate (float or array) broadcast to `shape` (*B, N) in float64."""
    if isinstance(g, bool) or not isinstance(g, (int, float, np.ndarray)):
        raise TypeError(f"gate must be a number or an array; got {type(g).__name__}")
    return np.broadcast_to(np.asarray(g, dtype=np.float64), shape)
