"""Conformance checks, one module per spec section; importing this registers them all."""

from . import (
    accuracy,
    api,
    complexity,
    definition,
    dtypes,
    errors,
    gradients,
    layer,
    stability,
    streaming,
    varlen,
)

__all__ = [
    "accuracy",
    "api",
    "complexity",
    "definition",
    "dtypes",
    "errors",
    "gradients",
    "layer",
    "stability",
    "streaming",
    "varlen",
]
