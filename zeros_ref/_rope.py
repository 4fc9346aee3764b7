"""Rotary position embedding, done right (spec 12.2).

RoPE rotates each pair of coordinates of q_t and k_i by an angle proportional to the
position, so that ``<R_t q, R_i k> = <q, R_(i-t) k>`` depends on ``t - i`` only and norms are
kept. Both common layouts are rotations as long as one layout is used for both the angles and
the pairs: "half" pairs coordinate j with j + D/2, "interleaved" pairs 2j with 2j + 1.
"""

from __future__ import annotations

from typing import Any, Literal

from array_api_compat import device

from ._validate import namespace_of

__all__ = ["rope"]


def rope(
    x: Any,
    *,
    offset: int = 0,
    base: float = 10000.0,
    layout: Literal["half", "interleaved"] = "half",
) -> Any:
    """Rotate the coordinate pairs of `x` by position-dependent angles.

    Parameters
    ----------
    x : (..., N, D) real floating array, D even.
    offset : position of the first row (for streaming: the number of tokens before it).
    base : angle base; pair j turns by ``position * base**(-2j/D)``.
    layout : "half" (pairs j, j + D/2) or "interleaved" (pairs 2j, 2j + 1).

    Returns
    -------
    (..., N, D) array of `x`'s dtype, row-wise of the same norm as `x`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((4, 2))
    >>> bool(np.allclose(np.linalg.norm(rope(x), axis=-1), np.sqrt(2)))
    True
    """
    xp = namespace_of(x, "x")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"`x` must have a real floating dtype; got {x.dtype}")
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"`x` must have shape (..., N, D) with D even; got {tuple(x.shape)}")
    if layout not in ("half", "interleaved"):
        raise ValueError(f"`layout` must be 'half' or 'interleaved'; got {layout!r}")
    n, half = x.shape[-2], x.shape[-1] // 2
    dev = device(x)
    freq = base ** (-xp.arange(half, dtype=x.dtype, device=dev) * 2.0 / x.shape[-1])  # (D/2,)
    position = xp.arange(offset, offset + n, dtype=x.dtype, device=dev)  # (N,)
    angle = position[:, None] * freq[None, :]  # (N, D/2)
    cos, sin = xp.cos(angle), xp.sin(angle)
    if layout == "half":
        a, b = x[..., :half], x[..., half:]
        return xp.concat([a * cos - b * sin, a * sin + b * cos], axis=-1)
    pairs = xp.reshape(x, (*x.shape[:-1], half, 2))  # (..., N, D/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = xp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return xp.reshape(rotated, x.shape)
