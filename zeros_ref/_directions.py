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
    When a squared norm overflows, or is too small to hold full precision (zero rows and
    underflow included), every row is first divided by its largest magnitude (then the
    squared norm lies in [1, D]), so the direction is exact to rounding whatever the scale of a
    finite input.
    """
    squared = xp.vecdot(x, x)[..., None]  # (..., 1)
    info = xp.finfo(x.dtype)
    safe = (squared >= info.smallest_normal / info.eps) & (squared <= info.max)
    if not bool(xp.all(safe)):
        peak = xp.max(xp.abs(x), axis=-1, keepdims=True)  # (..., 1)
        x = x / xp.where(peak > 0, peak, 1.0)
        squared = xp.vecdot(x, x)[..., None]
    norm = xp.sqrt(squared)
    return x / xp.where(norm > 0, norm, 1.0)
