"""Non-finite inputs and unit directions in the array-API form (ZS-ERR-NONFINITE, -V), with
`where` selections only.

The form computes on finite numbers: a query or key vector that holds a non-finite value
becomes a zero direction, a non-finite value entry, logit or gate becomes zero, and the form
then sets to NaN the rows such a value reaches (its own row for a query or a gate; every
later row of its sequence, and the state, for a key, a value or a logit). Every selection is
written so that its gradient is finite too: nothing unselected is ever multiplied.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Exact", "direction", "finite"]


class Exact(Protocol):
    """What the form calls, for a library whose arithmetic reads subnormal numbers as zero
    (XLA's CPU code), where such numbers could change the answer: powers of two applied to
    the bits. The module `zeros_backends.jax_exact` is one."""

    def directions(self, x: Any, axis: int) -> tuple[Any, Any]:
        """`direction` of the vectors of x along `axis`, those holding entries too small for
        the arithmetic first scaled by exact powers of two."""

    def lift(self, v: Any, kv: Any) -> Any:
        """The power of two (R,) int by which each row's values v (R, N, Dv) and state sums
        kv (S, R, 3, D, Dv) are multiplied so that none is subnormal; 0 where none is."""

    def raised(self, x: Any, power: Any) -> Any:
        """x 2^power exactly, subnormal x included (`power` >= 0 integer, broadcast)."""

    def lowered(self, x: Any, power: Any, *, exact: bool) -> Any:
        """x 2^-power (`power` >= 0 integer, broadcast): exactly, subnormal results included,
        or (not `exact`) with results below the smallest normal number possibly zero."""


def finite(xp: Any, x: Any) -> tuple[Any, Any]:
    """`x` with its non-finite entries replaced by 0, and where they were (bool)."""
    ok = xp.isfinite(x)
    return xp.where(ok, x, 0.0), ~ok


def direction(xp: Any, x: Any, axis: int = -1) -> tuple[Any, Any]:
    """Unit directions of the vectors along `axis` of `x` (-1 or -2), and which vectors held a
    non-finite value (`axis` reduced, bool).

    Zero vectors and vectors holding a non-finite value give zero directions. Each vector is
    divided by its largest magnitude before its norm is taken (the squared norm then lies in
    [1, D]), so the direction is exact to rounding for any finite scale (spec 2.1).
    """
    bad = ~xp.all(xp.isfinite(x), axis=axis, keepdims=True)
    x = xp.where(bad, 0.0, x)
    peak = xp.max(xp.abs(x), axis=axis, keepdims=True)
    y = x / xp.where(peak > 0, peak, 1.0)
    squared = xp.sum(y * y, axis=axis, keepdims=True)
    return y / xp.sqrt(xp.where(squared > 0, squared, 1.0)), xp.squeeze(bad, axis=axis)
