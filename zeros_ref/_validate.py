"""Input validation (spec section 8, ZS-ERR-*).

Every public function checks its arguments here before computing anything, so that
bad input fails with an error that names the argument, shape or dtype at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any

import array_api_compat

__all__ = [
    "Inputs",
    "broadcast_shapes",
    "check_causal",
    "check_inputs",
    "check_logits",
    "namespace_of",
]


def namespace_of(x: Any, name: str) -> Any:
    """Array namespace of `x`; `TypeError` naming `name` if `x` is not an array."""
    try:
        return array_api_compat.array_namespace(x)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an array of a supported array library; got {type(x).__name__}"
        ) from None


def check_causal(causal: Any) -> bool:
    """`causal` must be a real bool: a truthy stand-in would silently pick a mode."""
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool; got {type(causal).__name__}")
    return causal


def _library(xp: Any) -> str:
    return xp.__name__.removeprefix("array_api_compat.")


def broadcast_shapes(*named: tuple[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast shapes given as ``(name, shape)`` pairs, naming the first that does not fit."""
    result: tuple[int, ...] = ()
    for name, shape in named:
        n = max(len(result), len(shape))
        a = (1,) * (n - len(result)) + result
        b = (1,) * (n - len(shape)) + tuple(shape)
        merged = []
        for x, y in zip(a, b):
            if x != y and 1 not in (x, y):
                raise ValueError(
                    f"leading axes of `{name}` {tuple(shape)} do not broadcast with {result}"
                )
            merged.append(y if x == 1 else x)
        result = tuple(merged)
    return result


@dataclass(frozen=True)
class Inputs:
    """Validated, broadcast inputs of one attention call.

    Attributes
    ----------
    xp : namespace
        The array namespace of `q`.
    q, k : (*B, N, D) arrays
    v : (*B, N, Dv) array
    logits : (*B, N) array or None
    first, higher, zero : (*B, N) gate arrays
    dtype : dtype
        The input dtype.
    compute_dtype : dtype
        The dtype the algorithm runs in: float32 for half-precision inputs, otherwise the
        input dtype.
    offsets : tuple of int or None
        For a packed call (spec 5.2), the sequence boundaries ``0 = o_0 <= ... <= o_S = N``
        read from `cu_seqlens`; None for one sequence per row.
    """

    xp: Any
    q: Any
    k: Any
    v: Any
    logits: Any
    first: Any
    higher: Any
    zero: Any
    dtype: Any
    compute_dtype: Any
    offsets: tuple[int, ...] | None = None

    @property
    def batch(self) -> tuple[int, ...]:
        return tuple(self.q.shape[:-2])

    @property
    def n(self) -> int:
        return int(self.q.shape[-2])


def _check_array(
    xp: Any, x: Any, name: str, dtype: Any, device: Any, ndim: int, ref: str = "q"
) -> None:
    if namespace_of(x, name) is not xp:
        raise TypeError(
            f"`{name}` is a {_library(namespace_of(x, name))} array but `{ref}` is a "
            f"{_library(xp)} array; all arrays must come from one library"
        )
    if x.dtype != dtype:
        raise TypeError(
            f"`{name}` has dtype {x.dtype} but `{ref}` has dtype {dtype}; "
            "all arrays must share one floating dtype"
        )
    where = array_api_compat.device(x)
    if where != device and None not in (where, device):  # None: unknown (a JAX tracer's)
        raise ValueError(
            f"`{name}` is on device {array_api_compat.device(x)} but `{ref}` is on {device}"
        )
    if x.ndim < ndim:
        raise ValueError(f"`{name}` must have at least {ndim} axes; got shape {tuple(x.shape)}")


def _gate(xp: Any, g: Any, name: str, dtype: Any, device: Any, n: int, ref: str) -> Any:
    """A gate as an array of shape (..., N or 1), or a 0-d array for a Python number."""
    if isinstance(g, Real) and not isinstance(g, bool):
        return xp.asarray(float(g), dtype=dtype, device=device)
    if isinstance(g, bool) or not hasattr(g, "shape"):
        raise TypeError(f"`{name}` must be a real number or an array; got {type(g).__name__}")
    _check_array(xp, g, name, dtype, device, 0, ref)
    if g.ndim and g.shape[-1] not in (1, n):
        raise ValueError(
            f"`{name}` must broadcast to (..., N) with N = {n}; got shape {tuple(g.shape)}"
        )
    return g


def _gates(
    xp: Any, dtype: Any, device: Any, n: int, leading: list, *gates: Any
) -> tuple[tuple[int, ...], list[Any], Any]:
    """Check the three gates; return the broadcast batch shape, the gates and compute dtype.

    `leading` lists ``(name, leading shape)`` of the arrays checked so far; the first names the
    reference array the error messages compare against.
    """
    checked = []
    for name, g in zip(("first", "higher", "zero"), gates):
        checked.append(_gate(xp, g, name, dtype, device, n, leading[0][0]))
        if checked[-1].ndim:
            leading.append((name, checked[-1].shape[:-1]))
    compute = xp.float32 if xp.finfo(dtype).bits < 32 else dtype
    return broadcast_shapes(*leading), checked, compute


def check_logits(logits: Any, first: Any, higher: Any, zero: Any) -> tuple[Any, Any, list[Any]]:
    """Validate logits and gates alone (for `weights`).

    Returns ``(xp, logits, [first, higher, zero])``, all broadcast to (*B, N) in the compute
    dtype.
    """
    xp = namespace_of(logits, "logits")
    dtype = logits.dtype
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"`logits` must have a real floating dtype; got {dtype}")
    if logits.ndim < 1:
        raise ValueError("`logits` must have shape (..., N); got a 0-d array")
    n = logits.shape[-1]
    device = array_api_compat.device(logits)
    leading = [("logits", logits.shape[:-1])]
    batch, gates, compute = _gates(xp, dtype, device, n, leading, first, higher, zero)

    def full(x: Any) -> Any:
        return xp.astype(xp.broadcast_to(x, (*batch, n)), compute, copy=False)

    return xp, full(logits), [full(g) for g in gates]


def check_inputs(
    q: Any,
    k: Any,
    v: Any,
    logits: Any,
    first: Any,
    higher: Any,
    zero: Any,
) -> Inputs:
    """Validate the arguments of an attention call and broadcast them to common leading axes.

    Raises
    ------
    TypeError
        A non-array, a dtype that is not real floating, mixed dtypes or mixed array libraries.
    ValueError
        Too few axes, mismatched N, D or Dv, D = 0 or Dv = 0, leading axes that do not
        broadcast, mixed devices.
    """
    xp = namespace_of(q, "q")
    dtype = q.dtype
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"`q` must have a real floating dtype; got {dtype}")
    device = array_api_compat.device(q)
    _check_array(xp, q, "q", dtype, device, 2)
    _check_array(xp, k, "k", dtype, device, 2)
    _check_array(xp, v, "v", dtype, device, 2)
    n, d = q.shape[-2], q.shape[-1]
    if k.shape[-2] != n:
        raise ValueError(f"`k` must have the same length N as `q`; got {k.shape[-2]} and {n}")
    if v.shape[-2] != n:
        raise ValueError(f"`v` must have the same length N as `q`; got {v.shape[-2]} and {n}")
    if k.shape[-1] != d:
        raise ValueError(f"`k` must have the same last axis as `q`; got {k.shape[-1]} and {d}")
    if d == 0:
        raise ValueError(f"`q` must have a non-empty last axis (D >= 1); got shape "
                         f"{tuple(q.shape)}")
    if v.shape[-1] == 0:
        raise ValueError(f"`v` must have a non-empty last axis (Dv >= 1); got shape "
                         f"{tuple(v.shape)}")
    leading = [("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])]
    if logits is not None:
        _check_array(xp, logits, "logits", dtype, device, 1)
        if logits.shape[-1] != n:
            raise ValueError(
                f"`logits` must have length N = {n} on its last axis; got shape "
                f"{tuple(logits.shape)}"
            )
        leading.append(("logits", logits.shape[:-1]))
    batch, gates, compute = _gates(xp, dtype, device, n, leading, first, higher, zero)

    def full(x: Any, tail: tuple[int, ...]) -> Any:
        return xp.astype(xp.broadcast_to(x, (*batch, *tail)), compute, copy=False)

    return Inputs(
        xp=xp,
        q=full(q, (n, d)),
        k=full(k, (n, d)),
        v=full(v, (n, v.shape[-1])),
        logits=None if logits is None else full(logits, (n,)),
        first=full(gates[0], (n,)),
        higher=full(gates[1], (n,)),
        zero=full(gates[2], (n,)),
        dtype=dtype,
        compute_dtype=compute,
    )
