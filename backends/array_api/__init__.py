"""The array-API chunk form: ZeroS for any array library, jit-traceable, no host sync.

`chunked.attention` is the form itself, a pure function of arrays (`chunked`'s docstring);
`attention` here does what lies around it on the host: the chunk plan (`plan`), the states'
leading axes and token counts, and the error of spec 8 that the form can only flag (default
logits past the dtype's range). The `jax` and `cupy` backends run it; a backend may pass a
compiled `core` (``jax.jit`` of `chunked.attention` with ``jax.lax.scan``) and a `scan`.

Examples
--------
>>> import numpy as np
>>> import zeros_ref
>>> from zeros_ref import kernel
>>> rng = np.random.default_rng(0)
>>> q, k, v = (rng.normal(size=(2, 100, 8)) for _ in range(3))
>>> inp, state = kernel.check_call(q, k, v, logits=None, first=1.0, higher=1.0, zero=0.0,
...                                causal=True, state=None, return_state=False)
>>> out, _ = attention(inp, state, causal=True, return_state=False, chunk=16, slab=4)
>>> bool(np.allclose(out, zeros_ref.attention(q, k, v), atol=1e-12))
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from zeros_ref.kernel import Inputs, State, check_default_logits

from . import chunked
from .plan import Plan, plan
from .scans import Scan

__all__ = ["Plan", "attention", "bucket_size", "chunked", "plan"]

Core = Callable[..., chunked.Result]
"""`chunked.attention` with the namespace bound, or a compiled version of it: called as
``core(q, k, v, logits, gates, state, plan, causal=, return_state=, fresh=, packed=,
slab=)``."""


def attention(inp: Inputs, state: State, *, causal: bool, return_state: bool, chunk: int,
              slab: int, core: Core | None = None, scan: Scan | None = None,
              bucket: bool = False) -> tuple[Any, State | None]:
    """ZeroS attention of validated inputs by the array-API chunk form.

    Parameters
    ----------
    inp, state : from `zeros_ref.kernel.check_call` (inputs in the compute dtype; the state
        before the call, leading axes *B, or (S, *B) for a packed call).
    causal, return_state : as in `zeros_ref.attention`.
    chunk : C, the chunk length.
    slab : chunks computed at once (fewer for a short call).
    core : the form to call; None for `chunked.attention` on ``inp.xp`` with `scan`.
    scan : the `Scan` over slabs when `core` is None (None: a Python loop).
    bucket : pad the call's chunks and sequences up to a few sizes (`bucket_size`) with
        inert padding, so that a compiled `core` meets few shapes (each one compiles).

    Returns
    -------
    out : (*B, N, Dv) array of the input dtype.
    state : the state after the call (leading axes *B, or (S, *B)), if `return_state`.
    """
    xp, n = inp.xp, inp.n
    if n == 0:
        out = xp.zeros((*inp.batch, 0, inp.v.shape[-1]), dtype=inp.dtype)
        return out, (state if return_state else None)
    packed = inp.offsets is not None
    lengths = tuple(b - a for a, b in zip(inp.offsets[:-1], inp.offsets[1:], strict=True)) \
        if packed else (n,)
    held = state.length if packed else (state.length,)
    start = state if packed else _one(xp, state)
    real = sum(-(-size // chunk) for size in lengths)  # chunks the sequences take
    chunks, count = (bucket_size(real), bucket_size(len(lengths))) if bucket else (real, 0)
    slab = max(1, min(slab, chunks))
    chunks = -(-chunks // slab) * slab
    gather = packed or (bucket and chunks * chunk != n)
    arrays = (inp.q, inp.k, inp.v, inp.logits, inp.first, inp.higher, inp.zero)
    if bucket and gather:  # the inputs padded to the plan's slots, the sequences to `count`
        arrays = tuple(_extended(xp, x, chunks * chunk, axis=-1 if i > 2 else -2)
                       for i, x in enumerate(arrays))
        start = _more(xp, start, count - len(lengths))
    sizes = lengths + (0,) * (count - len(lengths))
    layout = plan(sizes, chunk, slab, xp, device=_device(inp.q), chunks=chunks,
                  tokens=chunks * chunk if bucket else 0)
    begin = State(length=xp.asarray(held + (0,) * (len(sizes) - len(held)), dtype=xp.int32,
                                     device=_device(inp.q)), **_arrays(start))
    if core is None:
        core = functools.partial(chunked.attention, xp, scan=scan)
    q, k, v, logits, *gates = arrays
    result = core(q, k, v, logits, tuple(gates), begin, layout, causal=causal,
                  return_state=return_state, fresh=not any(held), gather=gather, slab=slab)
    if inp.logits is None and bool(result.overflow):
        check_default_logits(xp, xp.asarray([math.inf], dtype=inp.compute_dtype), inp.k)
    out = xp.astype(result.out[..., :n, :], inp.dtype)
    if not return_state:
        return out, None
    counts = tuple(a + b for a, b in zip(held, lengths, strict=True))
    end = State(length=counts, **_arrays(result.state, rows=slice(0, len(lengths))))
    return out, (end if packed else State(length=counts[0], **_arrays(end, rows=0)))


def bucket_size(size: int) -> int:
    """The smallest of 1..8 and m 2^e (m = 8..15) that is at least `size`: at most 12.5% more,
    and eight sizes an octave."""
    if size <= 8:
        return size
    scale = 1 << (size.bit_length() - 4)  # size / scale lies in [8, 16)
    return -(-size // scale) * scale


def _extended(xp: Any, x: Any, size: int, *, axis: int) -> Any:
    """`x` with zeros appended along `axis` up to `size` (None stays None)."""
    if x is None or x.shape[axis] >= size:
        return x
    shape = list(x.shape)
    shape[axis] = size - shape[axis]
    return xp.concat([x, xp.zeros(tuple(shape), dtype=x.dtype, device=_device(x))], axis=axis)


def _more(xp: Any, state: State, extra: int) -> State:
    """A packed `state` with `extra` empty sequences' states appended (zeros)."""
    if not extra:
        return state
    return State(length=state.length + (0,) * extra,
                 **{name: xp.concat([x, xp.zeros((extra, *x.shape[1:]), dtype=x.dtype,
                                                  device=_device(x))])
                    for name, x in _arrays(state).items()})


def _arrays(state: State, rows: int | slice | None = None) -> dict[str, Any]:
    """The array fields of `state` by name (`rows` of their leading axis if given)."""
    names = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")
    return {name: getattr(state, name) if rows is None else getattr(state, name)[rows, ...]
            for name in names}


def _one(xp: Any, state: State) -> State:
    """A dense call's state (*B) as the state of one sequence, leading axes (1, *B)."""
    return State(length=(state.length,),
                 **{name: x[None, ...] for name, x in _arrays(state).items()})


def _device(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(x)
