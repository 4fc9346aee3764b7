"""The whole ZeroS attention layer around the core (spec section 13, ZS-LAYER-*).

The paper's block, as its authors' published layer builds it, with the departures of spec
13.2: projections of the input x, per-head gates and deviation logits, RoPE on q and k, the
core of `attention` per head, a per-head LayerNorm and the output projection. Linear maps are
``x @ w + b`` with ``w`` of shape (in, out); a PyTorch ``nn.Linear`` weight is ``w.T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, Literal

import array_api_compat

from ._attention import attention as core_attention
from ._logits import running_mean_logits
from ._params import PARAMETERS, check_heads, parameter_shapes
from ._quiet import quietly
from ._rope import rope as rotate
from ._state import State
from ._validate import check_causal, namespace_of
from ._varlen import check_cu_seqlens

__all__ = ["LayerState", "layer"]

NORM_EPS = 1e-5
"""The per-head LayerNorm's epsilon (spec 13.1)."""
ROPE_BASE = 10000.0

@dataclass(frozen=True)
class LayerState:
    """The state of a causal layer prefix: what `layer` needs to continue it.

    The prefix length, which is also the RoPE position of the next token, is ``core.length``.

    Attributes
    ----------
    core : State
        The core state of every head, leading axes (*B, H).
    u_sum : (*B, H, d) array
        Sum of the radial projections u of the prefix, for the deviation logits.
    """

    core: State
    u_sum: Any

    @property
    def length(self) -> int | tuple[int, ...]:
        return self.core.length

    @classmethod
    def stack(cls, xp: Any, states: list[LayerState]) -> LayerState:
        """The packed state of the sequences' `states` (spec 5.2): leading axes (S, *B)."""
        return cls(core=State.stack(xp, [st.core for st in states]),
                   u_sum=xp.stack([st.u_sum for st in states]))

    def sequence(self, j: int) -> LayerState:
        """The state of sequence j of a packed state."""
        return LayerState(core=self.core.sequence(j), u_sum=self.u_sum[j, ...])


def _check_params(
    xp: Any, params: Any, dtype: Any, device: Any, dm: int, heads: int
) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be a mapping of names to arrays; got "
                        f"{type(params).__name__}")
    missing = [name for name in PARAMETERS if name not in params]
    extra = sorted(set(params) - set(PARAMETERS))
    if missing or extra:
        raise ValueError(f"`params` must have exactly the names {list(PARAMETERS)}; missing "
                         f"{missing}, unknown {extra}")
    checked = {}
    for name, shape in parameter_shapes(dm, heads).items():
        value = params[name]
        label = f"params[{name!r}]"
        if namespace_of(value, label) is not xp:
            raise TypeError(f"`{label}` must be an array of the library of `x`")
        if value.dtype != dtype:
            raise TypeError(f"`{label}` has dtype {value.dtype} but `x` has dtype {dtype}")
        if array_api_compat.device(value) != device:
            raise ValueError(f"`{label}` is on device {array_api_compat.device(value)} but "
                             f"`x` is on {device}")
        if tuple(value.shape) != shape:
            raise ValueError(f"`{label}` must have shape {shape} for Dm = {dm} and heads = "
                             f"{heads}; got {tuple(value.shape)}")
        checked[name] = value
    return checked


def _check_options(heads: Any, dm: int, first_layer: Any, rope: Any, norm: Any) -> int:
    """Validate the keyword options; returns the head width d."""
    d = check_heads(dm, heads)
    for name, value in (("first_layer", first_layer), ("norm", norm)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool; got {type(value).__name__}")
    if rope not in (None, "half", "interleaved"):
        raise ValueError(f"`rope` must be 'half', 'interleaved' or None; got {rope!r}")
    if rope is not None and d % 2:
        raise ValueError(f"`rope` needs an even head width; got d = Dm / heads = {d}")
    return d


def _check_overflow(xp: Any, x: Any, params: dict[str, Any], out: Any) -> None:
    """Raise `ValueError` naming `x` when finite x and parameters give a non-finite output:
    some projection, logit, sum or the output itself passed the dtype's largest number
    (spec 13.1, section 8), which would be NaN or infinity without a word. A non-finite x or
    parameter is non-finite input (ZS-ERR-NONFINITE) and passes through."""
    if bool(xp.all(xp.isfinite(out))) or not bool(xp.all(xp.isfinite(x))):
        return
    if not all(bool(xp.all(xp.isfinite(w))) for w in params.values()):
        return
    largest = float(xp.max(xp.abs(x)))
    raise ValueError(
        f"`x` is too large for the layer: with entries of up to {largest:.3g} in magnitude, "
        f"its projections, logits or outputs pass the largest {out.dtype} number "
        "(spec 13.1); scale x or the projection weights down"
    )


def _packed(xp: Any, x: Any, params: Mapping[str, Any], offsets: tuple[int, ...],
            state: LayerState | None, return_state: bool, options: dict[str, Any]) -> Any:
    """The layer on each packed sequence alone (spec 5.2): outputs concatenated along the
    time axis, states stacked on a new leading axis."""
    count = len(offsets) - 1
    if state is not None and not (state.core.packed and len(state.length) == count):
        raise ValueError(f"`state` must hold one state per sequence of `cu_seqlens` ({count}); "
                         f"got {'one per row' if not state.core.packed else len(state.length)}")
    outputs, states = [], []
    for j, (a, b) in enumerate(pairwise(offsets)):
        result = layer(x[..., a:b, :], params, **options, return_state=return_state,
                       state=None if state is None else state.sequence(j))
        out, end = result if return_state else (result, None)
        outputs.append(out)
        states.append(end)
    if not outputs:  # S = 0, hence T = 0: an empty output, and a packed state of no rows
        out, end = layer(x, params, **options, return_state=True)
        one = LayerState.stack(xp, [end])
        empty = LayerState(core=replace(one.core.rows(slice(0, 0)), length=()),
                           u_sum=one.u_sum[:0, ...])
        return (out, empty) if return_state else out
    out = xp.concat(outputs, axis=-2)
    return (out, LayerState.stack(xp, states)) if return_state else out


def _sigmoid(xp: Any, x: Any) -> Any:
    return 0.5 * (1.0 + xp.tanh(0.5 * x))  # no overflow for any finite x


@quietly
def layer(
    x: Any,
    params: Mapping[str, Any],
    *,
    heads: int,
    causal: bool = True,
    first_layer: bool = False,
    rope: Literal["half", "interleaved"] | None = "half",
    norm: bool = True,
    state: LayerState | None = None,
    return_state: bool = False,
    attention: Callable[..., Any] | None = None,
    cu_seqlens: Any = None,
) -> Any:
    """The ZeroS attention layer (spec section 13, ZS-LAYER-REFERENCE).

    Parameters
    ----------
    x : (*B, N, Dm) real floating array, Dm = heads * d.
    params : mapping of the names in `PARAMETERS` to arrays of `x`'s library, dtype and
        device: ``wq, wk, wv, wu, wo`` (Dm, Dm); ``bq, bk, bv, bu, bo`` (Dm,); ``wg``
        (Dm, 3H) and ``bg`` (3H,), the gates of head h in columns 3h, 3h+1, 3h+2 (first,
        higher, zero); ``mu`` (H, d) and ``log_tau`` (H,), the prior of the deviation logits.
    heads : H, the number of heads.
    causal : causal (prefix) or bidirectional attention.
    first_layer : the zero-order gate is ``tanh`` of its projection in the first layer and 0
        in every other layer.
    rope : RoPE pairing on q and k ("half", "interleaved") or None; base 10000.
    norm : the per-head LayerNorm without affine parameters (eps 1e-5).
    state, return_state : streaming as in `attention` (causal only), with a `LayerState`.
    attention : the core, ``attention(q, k, v, *, logits, first, higher, zero, causal,
        state, return_state)`` per head; `zeros_ref.attention` by default. A backend passes
        its own to reuse this glue around its kernel.
    cu_seqlens : (S + 1,) integer array or None
        Offsets of S sequences packed along the time axis (spec 5.2, ZS-LAYER-VARLEN): RoPE
        positions, prior means and the core restart at each; `state` then holds one state
        per sequence.

    Returns
    -------
    (*B, N, Dm) array of `x`'s dtype, and the `LayerState` if `return_state`.

    Notes
    -----
    Step by step (spec table 13.1): q, k, v, u = x W + b, split into heads (head h takes
    columns h d .. (h+1) d); gates from ``x @ wg + bg``; deviation logits of u with prior
    mean mu_h and strength tau_h = exp(log_tau_h); RoPE at positions offset .. offset+N-1;
    the core per head; LayerNorm over d; heads merged in order; ``@ wo + bo``. Half-precision
    inputs are computed in float32 and rounded once.

    Examples
    --------
    >>> import numpy as np
    >>> from zeros_ref import random_layer_params
    >>> params = random_layer_params(8, 2, seed=0)
    >>> x = np.random.default_rng(1).normal(size=(3, 5, 8))
    >>> layer(x, params, heads=2).shape
    (3, 5, 8)
    """
    xp = namespace_of(x, "x")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"`x` must have a real floating dtype; got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (*B, N, Dm); got {tuple(x.shape)}")
    dm, n, batch = x.shape[-1], x.shape[-2], tuple(x.shape[:-2])
    d = _check_options(heads, dm, first_layer, rope, norm)
    check_causal(causal)
    p = _check_params(xp, params, x.dtype, array_api_compat.device(x), dm, heads)
    if not causal and (state is not None or return_state):
        raise ValueError("`state` and `return_state` need causal=True")
    if state is not None and not isinstance(state, LayerState):
        raise TypeError(f"`state` must be a zeros_ref.LayerState; got {type(state).__name__}")
    if cu_seqlens is not None:
        offsets = check_cu_seqlens(xp, cu_seqlens, n, array_api_compat.device(x))
        options = {"heads": heads, "causal": causal, "first_layer": first_layer, "rope": rope,
                   "norm": norm, "attention": attention}
        return _packed(xp, x, params, offsets, state, return_state, options)
    if state is not None and state.core.packed:
        raise ValueError("`state` holds the states of packed sequences; pass the "
                         "`cu_seqlens` it was made for")
    if state is not None and tuple(state.u_sum.shape) != (*batch, heads, d):
        raise ValueError(f"`state` was made for (*B, H, d) = {tuple(state.u_sum.shape)} but "
                         f"these inputs need {(*batch, heads, d)}")
    compute = xp.float32 if xp.finfo(x.dtype).bits < 32 else x.dtype
    xc = xp.astype(x, compute)
    p = {name: xp.astype(value, compute) for name, value in p.items()}
    nb = len(batch)
    swap = (*range(nb), nb + 1, nb, nb + 2)  # (*B, N, H, .) <-> (*B, H, N, .)

    # Step 1: projections, split into heads, (*B, H, N, d) each.
    def heads_of(y: Any) -> Any:
        return xp.permute_dims(xp.reshape(y, (*batch, n, heads, d)), swap)

    q, k, v, u = (heads_of(xc @ p[f"w{c}"] + p[f"b{c}"]) for c in "qkvu")
    # Step 2: gates, (*B, H, N) each, in the order (first, higher, zero) per head.
    g = xp.reshape(xc @ p["wg"] + p["bg"], (*batch, n, heads, 3))
    g = xp.permute_dims(g, (*range(nb), nb + 1, nb, nb + 2))  # (*B, H, N, 3)
    first, higher = _sigmoid(xp, g[..., 0]), _sigmoid(xp, g[..., 1])
    zero = xp.tanh(g[..., 2]) if first_layer else 0.0
    # Step 3: deviation logits of u with the per-head prior (mu_h, tau_h), (*B, H, N).
    tau = xp.exp(p["log_tau"])[:, None]  # (H, 1)
    prior_sum, prior_count = tau * p["mu"], tau  # (H, d), (H, 1)
    if state is not None:
        prior_sum, prior_count = prior_sum + state.u_sum, prior_count + state.length
    if causal:
        s = running_mean_logits(xp, u, prior_sum, prior_count)
    else:  # every position sees the whole sequence: count tau + N (spec 13.2)
        ubar = (prior_sum + xp.sum(u, axis=-2)) / (prior_count + n)  # (*B, H, d)
        s = -xp.sum(u * ubar[..., None, :], axis=-1) / math.sqrt(d)
    # Step 4: RoPE on q and k at the absolute positions of this piece.
    if rope is not None:
        offset = 0 if state is None else state.length
        q = rotate(q, offset=offset, base=ROPE_BASE, layout=rope)
        k = rotate(k, offset=offset, base=ROPE_BASE, layout=rope)
    # Step 5: the core per head.
    core = core_attention if attention is None else attention
    result = core(q, k, v, logits=s, first=first, higher=higher, zero=zero, causal=causal,
                  state=None if state is None else state.core, return_state=return_state)
    o, core_state = result if return_state else (result, None)
    o = xp.astype(o, compute)
    # Step 6: LayerNorm over d, per head, without affine parameters.
    if norm:
        centred = o - xp.mean(o, axis=-1, keepdims=True)
        o = centred / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + NORM_EPS)
    # Step 7: heads merged back in order, output projection.
    merged = xp.reshape(xp.permute_dims(o, swap), (*batch, n, dm))
    out = xp.astype(merged @ p["wo"] + p["bo"], x.dtype)
    _check_overflow(xp, x, p, out)
    if not return_state:
        return out
    u_sum = xp.sum(u, axis=-2) + (0.0 if state is None else state.u_sum)  # (*B, H, d)
    return out, LayerState(core=core_state, u_sum=u_sum)
