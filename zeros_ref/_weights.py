"""The literal definition: the weight matrix r and the explicit O(N^2) form (spec section 2).

This module is the definition written out, used to check the O(N) form. It materialises
(..., N, N) arrays and is meant for small N.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from array_api_compat import device

from ._directions import unit
from ._logits import check_default_logits, deviation_logits
from ._quiet import quietly
from ._validate import Inputs, check_causal, check_inputs, check_logits
from ._varlen import check_cu_seqlens, sequence_inputs

__all__ = ["explicit_attention", "weights"]


def _weights(xp: Any, s: Any, first: Any, higher: Any, zero: Any, causal: bool) -> Any:
    n = s.shape[-1]
    if n == 0:
        return xp.zeros((*s.shape, 0), dtype=s.dtype, device=device(s))
    t_index = xp.arange(n, device=device(s))
    if causal:
        visible = t_index[None, :] <= t_index[:, None]  # (N, N): i <= t
        t = xp.astype(t_index + 1, s.dtype)  # (N,) prefix lengths
    else:
        visible = xp.ones((n, n), dtype=xp.bool, device=device(s))
        t = xp.full((n,), float(n), dtype=s.dtype, device=device(s))
    # Step 1 (spec 2.2, p): softmax of the logits over each row's prefix P(t).
    rows = xp.where(visible, s[..., None, :], -xp.inf)  # (..., N, N)
    e = xp.where(visible, xp.exp(rows - xp.max(rows, axis=-1, keepdims=True)), 0.0)
    p = e / xp.sum(e, axis=-1, keepdims=True)
    # Step 2 (spec 2.2, z, f, h): zero-order, first-order and higher-order terms.
    z = xp.where(visible, 1.0 / t[:, None], 0.0)
    mean = xp.sum(xp.where(visible, s[..., None, :], 0.0), axis=-1, keepdims=True) / t[:, None]
    f = xp.where(visible, (s[..., None, :] - mean) / t[:, None], 0.0)
    h = p - z - f
    # Step 3 (spec 2.2, r): the gated combination.
    return first[..., None] * f + higher[..., None] * h + zero[..., None] * z


@quietly
def weights(
    logits: Any,
    *,
    first: Any = 1.0,
    higher: Any = 1.0,
    zero: Any = 0.0,
    causal: bool = True,
) -> Any:
    """The ZeroS weight matrix ``r`` (ZS-DEF-WEIGHTS), without the cosine factor.

    Parameters
    ----------
    logits : (..., N) real floating array of radial logits s.
    first, higher, zero : float or array broadcastable to (..., N), the gates of each row t.
    causal : prefix weights (zero above the diagonal) if True, whole-sequence otherwise.

    Returns
    -------
    (..., N, N) array: ``r[t, i] = g1_t f[t,i] + gh_t h[t,i] + g0_t z[t,i]``. With
    ``zero = 0`` every row sums to zero (ZS-DEF-ZEROSUM).

    Examples
    --------
    >>> import numpy as np
    >>> r = weights(np.array([0.0, 1.0, 3.0]))
    >>> bool(np.allclose(r.sum(axis=-1), 0.0))
    True
    """
    xp, s, gates = check_logits(logits, first, higher, zero)
    check_causal(causal)
    return xp.astype(_weights(xp, s, *gates, causal), logits.dtype, copy=False)


@quietly
def explicit_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    logits: Any = None,
    first: Any = 1.0,
    higher: Any = 1.0,
    zero: Any = 0.0,
    causal: bool = True,
    cu_seqlens: Any = None,
) -> Any:
    """ZeroS attention by its definition, in O(N^2) time and memory (ZS-DEF-WEIGHTS).

    ``out_t = sum_i r[t, i] cos(q_t, k_i) v_i``. Same arguments and result as `attention`
    (without streaming); for checking the O(N) form on small inputs. With `cu_seqlens`
    (spec 5.2), each packed sequence is its own slice, computed alone.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 6, 4))
    >>> from zeros_ref import attention
    >>> bool(np.allclose(explicit_attention(q, k, v), attention(q, k, v)))
    True
    """
    inp = check_inputs(q, k, v, logits, first, higher, zero)
    check_causal(causal)
    xp = inp.xp
    if cu_seqlens is not None:
        offsets = check_cu_seqlens(xp, cu_seqlens, inp.n, device(inp.q))
        outputs = [_explicit(sequence_inputs(inp, a, b), causal)
                   for a, b in pairwise(offsets)]
        out = xp.concat(outputs, axis=-2) if outputs else inp.v[..., :0, :]
        return xp.astype(out, inp.dtype, copy=False)
    return xp.astype(_explicit(inp, causal), inp.dtype, copy=False)


def _explicit(inp: Inputs, causal: bool) -> Any:
    """The definition on validated inputs, in the compute dtype (*B, N, Dv)."""
    xp = inp.xp
    s = inp.logits
    if s is None:
        s = deviation_logits(inp.k, causal=causal)  # (..., N), ZS-LOG-DEFAULT
        check_default_logits(xp, s, inp.k)
    r = _weights(xp, s, inp.first, inp.higher, inp.zero, causal)  # (..., N, N)
    cos = unit(xp, inp.q) @ xp.matrix_transpose(unit(xp, inp.k))  # (..., N, N)
    return (r * cos) @ inp.v
