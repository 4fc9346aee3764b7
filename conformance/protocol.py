"""The backend protocol (spec section 10): what the suite may call on a backend."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["DTYPES", "FEATURES", "Backend", "claimed_features", "protocol_problems"]

DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Dtype names a backend may claim, from least to most precise."""

FEATURES = frozenset({"bidirectional", "state", "default_logits", "grad"})
"""Optional features (spec 10.2); "core" is always required."""


@runtime_checkable
class Backend(Protocol):
    """A ZeroS implementation under test.

    Arrays are the backend's own; `from_numpy` and `to_numpy` convert. `attention` has the
    semantics of `zeros_ref.attention`. Optional attributes: ``features`` (claimed optional
    features, all when absent), ``gradients`` (with "grad"), ``memory_peak(fn) -> int``
    (peak bytes allocated while ``fn()`` runs, for devices the process RSS does not see) and
    ``device`` (a string for the report) and ``synchronize()`` (waits for queued device work,
    for timings).
    """

    name: str
    dtypes: tuple[str, ...]

    def from_numpy(self, x: np.ndarray, dtype: str) -> Any: ...

    def to_numpy(self, x: Any) -> np.ndarray: ...

    def attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any: ...


def claimed_features(backend: Any) -> frozenset[str]:
    """Features the backend claims, plus "core"."""
    features = getattr(backend, "features", None)
    return frozenset({"core"}) | (FEATURES if features is None else frozenset(features))


def protocol_problems(backend: Any) -> list[str]:
    """What is missing or malformed in the backend's protocol attributes (ZS-API-PROTOCOL)."""
    problems = []
    if not isinstance(getattr(backend, "name", None), str):
        problems.append("`name` must be a str")
    dtypes = getattr(backend, "dtypes", None)
    if not isinstance(dtypes, tuple) or not dtypes or not set(dtypes) <= set(DTYPES):
        problems.append(f"`dtypes` must be a non-empty tuple drawn from {DTYPES}; got {dtypes!r}")
    for method in ("from_numpy", "to_numpy", "attention"):
        if not callable(getattr(backend, method, None)):
            problems.append(f"`{method}` must be callable")
    features = getattr(backend, "features", None)
    if features is not None:
        if not isinstance(features, frozenset):
            problems.append(f"`features` must be a frozenset; got {type(features).__name__}")
        elif not features <= FEATURES:
            problems.append(f"`features` names unknown features {sorted(features - FEATURES)}")
        elif "grad" in features and not callable(getattr(backend, "gradients", None)):
            problems.append('`features` claims "grad" but `gradients` is not callable')
    return problems


def usable_dtypes(backend: Any) -> tuple[str, ...]:
    """The claimed dtypes in the order of `DTYPES`."""
    return tuple(d for d in DTYPES if d in getattr(backend, "dtypes", ()))
