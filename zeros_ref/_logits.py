"""Radial logits: one scalar per key, computed from a projection `u` (spec sections 3 and 12.1).

The paper computes the logit from an extra projection ``u = x W_u`` of the layer input.
`attention` uses the deviation logit with ``u := k`` when no logits are given (ZS-LOG-DEFAULT).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from ._validate import namespace_of

__all__ = ["check_default_logits", "deviation_logits", "mean_logits", "quadratic_logits"]


def _check_u(u: Any) -> Any:
    xp = namespace_of(u, "u")
    if not xp.isdtype(u.dtype, "real floating"):
        raise TypeError(f"`u` must have a real floating dtype; got {u.dtype}")
    if u.ndim < 2:
        raise ValueError(f"`u` must have shape (..., N, D); got {tuple(u.shape)}")
    return xp


def running_mean_logits(xp: Any, u: Any, prior_sum: Any, prior_weight: Any) -> Any:
    """Deviation logits of `u` against a running mean that starts from a prior.

    ``ubar_i = (prior_sum + sum_{j<=i} u_j) / (prior_weight + i)`` (i counts from 1 within `u`),
    ``s_i = -<u_i, ubar_i> / sqrt(D)``. Used by `deviation_logits` (prior ``tau*mu``, ``tau``)
    and by streaming `attention`, whose state carries the sum and count of earlier keys.

    Shapes: u (..., C, D); prior_sum (..., D) or scalar; prior_weight scalar or (..., 1) (one
    per leading index, as the layer's per-head tau). Returns (..., C).
    """
    c, d = u.shape[-2], u.shape[-1]
    count = prior_weight + xp.arange(1, c + 1, dtype=u.dtype, device=device(u))  # (..., C)
    ubar = (xp.expand_dims(prior_sum, axis=-2) + xp.cumulative_sum(u, axis=-2))
    ubar = ubar / count[..., :, None]
    return -xp.sum(u * ubar, axis=-1) / math.sqrt(d)  # (..., C)


def check_default_logits(xp: Any, s: Any, k: Any, key_sum: Any = None) -> None:
    """Raise `ValueError` naming `k` when finite keys give default logits that are not finite.

    Parameters
    ----------
    xp : array namespace of the arrays.
    s : (..., C) the default logits (ZS-LOG-DEFAULT) of the keys `k`.
    k : (..., C, D) keys of the call (or of one chunk of it).
    key_sum : (..., D) array or None, the sum of the keys of a streamed prefix (if any).

    Notes
    -----
    ``-<k_i, ubar_i> / sqrt(D)`` exceeds the dtype's range only when ``|k_i| |ubar_i|`` does,
    for keys of norm about 1e154 in float64 and 1e19 in float32: such keys are bad input
    (spec sections 3 and 8), and a non-finite logit would make the output NaN without a word.
    Where a key (or the prefix) is itself non-finite, its logit is not finite either, which
    is the non-finite input of ZS-ERR-NONFINITE, not an error. The check reads one boolean on
    the host per call (and three to build the message).
    """
    if bool(xp.all(xp.isfinite(s))):
        return
    if not bool(xp.all(xp.isfinite(k))):
        return
    if key_sum is not None and not bool(xp.all(xp.isfinite(key_sum))):
        return
    largest = float(xp.max(xp.abs(k)))
    raise ValueError(
        f"`k` is too large for the default logits: with keys of up to {largest:.3g} in "
        f"magnitude, -<k_i, ubar_i> / sqrt(D) is past the largest {k.dtype} number (spec 3); "
        "pass `logits`, or keys of a smaller norm"
    )


def deviation_logits(u: Any, *, mu: Any = 0.0, tau: float = 1.0, causal: bool = True) -> Any:
    """Deviation logits ``s_i = -<u_i, ubar_i> / sqrt(D)`` (spec 12.1).

    Parameters
    ----------
    u : (..., N, D) real floating array, the radial projection of each token.
    mu : float or (..., D) array, prior mean of `u`.
    tau : float > 0, strength of the prior (in tokens).
    causal : if True, ``ubar_i = (tau*mu + sum_{j<=i} u_j) / (tau + i)``; otherwise every
        position uses ``ubar = (tau*mu + sum_j u_j) / (tau + N)``.

    Returns
    -------
    (..., N) array of `u`'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> deviation_logits(np.ones((3, 2))).round(3).tolist()
    [-0.707, -0.943, -1.061]
    """
    xp = _check_u(u)
    if not tau > 0:
        raise ValueError(f"`tau` must be > 0; got {tau}")
    ones = xp.ones(u.shape[-1:], dtype=u.dtype, device=device(u))  # (D,)
    prior = tau * xp.asarray(mu, dtype=u.dtype, device=device(u)) * ones  # (..., D)
    if causal:
        return running_mean_logits(xp, u, prior, tau)
    n, d = u.shape[-2], u.shape[-1]
    ubar = (prior + xp.sum(u, axis=-2)) / (tau + n)  # (..., D)
    return -xp.sum(u * xp.expand_dims(ubar, axis=-2), axis=-1) / math.sqrt(d)


def quadratic_logits(u: Any) -> Any:
    """Quadratic logits ``s_i = |u_i|^2 / D`` (spec 12.1). u: (..., N, D) -> (..., N)."""
    xp = _check_u(u)
    return xp.sum(u * u, axis=-1) / u.shape[-1]


def mean_logits(u: Any) -> Any:
    """Mean logits ``s_i = sum_j u_ij / D`` (spec 12.1). u: (..., N, D) -> (..., N)."""
    xp = _check_u(u)
    return xp.sum(u, axis=-1) / u.shape[-1]
