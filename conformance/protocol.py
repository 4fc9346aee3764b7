"""The backend protocol (spec section 10): what the suite may call on a backend."""

from __future__ import annotations

from typing import Any

__all__ = ["DTYPES", "FEATURES", "claimed_features", "protocol_problems", "usable_dtypes"]

DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Dtype names a backend may claim, from least to most precise."""

FEATURES = frozenset({"bidirectional", "state", "default_logits", "grad", "layer"})
"""Optional features (spec 10.2); "core" is always required."""


def claimed_features(backend: Any) -> frozenset[str]:
    """Features the backend claims, plus "core". Without a `features` attribute: all, except
    "layer" when the backend has no `layer` method."""
    features = getattr(backend, "features", None)
    if features is None:
        has_layer = callable(getattr(backend, "layer", None))
        features = FEATURES if has_layer else FEATURES - {"layer"}
    return frozenset({"core"}) | frozenset(features)


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
        elif "layer" in features and not callable(getattr(backend, "layer", None)):
            problems.append('`features` claims "layer" but `layer` is not callable')
    return problems


def usable_dtypes(backend: Any) -> tuple[str, ...]:
    """The claimed dtypes in the order of `DTYPES`."""
    return tuple(d for d in DTYPES if d in getattr(backend, "dtypes", ()))
