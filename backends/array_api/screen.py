"""Non-finite inputs and unit directions in the array-API form (ZS-ERR-NONFINITE, -V), with
`where` selections only.

The form computes on finite numbers: a query or key vector that holds a non-finite value
becomes a zero direction, a non-finite value entry, logit or gate becomes zero, and the form
then sets to NaN the rows such a value reaches (its own row for a query or a gate; every
later row of its sequence, and the state, for a key, a value or a logit). Every selection is
written so that its gradient is finite too: nothing unselected is ever multiplied.
"""

from __future__ import annotations

from typing import Any

__all__ = ["direction", "finite"]


def finite(xp: Any, x: Any) -> tuple[Any, Any]:
    """`x` with its non-finite entries replaced by 0, and where they were (bool)."""
    ok = xp.isfinite(x)
    return xp.where(ok, x, 0.0), ~ok


def direction(xp: Any, x: Any) -> tuple[Any, Any]:
    """Unit directions of the vectors along the last axis of `x` (..., D), and which vectors
    held a non-finite value (...,) bool.

    Zero vectors and vectors holding a non-finite value give zero directions. Each vector is
    divided by its largest magnitude before its norm is taken (the squared norm then lies in
    [1, D]), so the direction is exact to rounding for any finite scale (spec 2.1).
    """
    bad = ~xp.all(xp.isfinite(x), axis=-1)
    x = xp.where(bad[..., None], 0.0, x)
    peak = xp.max(xp.abs(x), axis=-1, keepdims=True)
    y = x / xp.where(peak > 0, peak, 1.0)
    squared = xp.sum(y * y, axis=-1, keepdims=True)
    return y / xp.sqrt(xp.where(squared > 0, squared, 1.0)), bad
