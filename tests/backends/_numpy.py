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
    """Rows of `x` scaled to unit length, zero rows kept zero, at any scale: each row is
    divided by its largest magnitude before its norm is taken (ZS-STAB-MAGNITUDE)."""
    peak = np.max(np.abs(x), axis=-1, keepdims=True)
    x = x / np.where(peak > 0, peak, 1.0)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def check_state(state: Any, dtype: str, slot: str, shape: tuple[int, ...]) -> None:
    """The errors of ZS-ERR-STATE for a state kept as a dict of arrays that records the compute
    dtype of the call that made it: `TypeError` for another object or dtype, `ValueError`
    when ``state[slot]`` does not have `shape`."""
    if not isinstance(state, dict):
        raise TypeError(f"`state` must be a state returned by this backend; got "
                        f"{type(state).__name__}")
    if state["dtype"] != dtype:
        raise TypeError(f"`state` was made by a {state['dtype']} call, not {dtype}")
    if state[slot].shape != shape:
        raise ValueError(f"`state` holds {slot} of shape {state[slot].shape}, these inputs "
                         f"need {shape}")


def gate(g: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A gate (float or array) broadcast to `shape` (*B, N) in float64."""
    if isinstance(g, bool) or not isinstance(g, (int, float, np.ndarray)):
        raise TypeError(f"gate must be a number or an array; got {type(g).__name__}")
    return np.broadcast_to(np.asarray(g, dtype=np.float64), shape)
