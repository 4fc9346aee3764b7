"""Angular part: unit directions of queries and keys (spec section 2, ZS-DEF-COSINE).

Only the directions of `q` and `k` enter the weights. A zero vector has direction zero, so
its cosine with anything is 0 (never NaN).
"""

from __future__ import annotations

from typing import Any

__all__ = ["unit"]


def unit(xp: Any, x: Any) -> Any:
    """Unit vectors along the last axis of `x`; zero vectors map to zero.

    Parameters
    ----------
    xp : array namespace of `x`.
    x : (..., D) real floating array.

    Returns
    -------
    (..., D) array of the same dtype: ``x / |x|`` row-wise, 0 where ``|x| = 0``.

    Notes
    -----
    Each row is first divided by its largest magnitude, so the norm neither overflows nor
    underflows for any finite input: the direction is exact to rounding whatever the scale.
    """
    peak = xp.max(xp.abs(x), axis=-1, keepdims=True)  # (..., 1)
    x = x / xp.where(peak > 0, peak, 1.0)
    norm = xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))  # (..., 1), in [1, sqrt(D)] or 0
    return x / xp.where(norm > 0, norm, 1.0)
