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
from typing import Any, NamedTuple

import numpy as np

from zeros_ref.kernel import Inputs, State, check_default_logits

from . import chunked
from .plan import Plan, chunk_plan
from .scans import Scan

__all__ = ["Plan", "attention", "bucket_size", "chunk_plan", "chunked"]

Core = Callable[..., chunked.Result]
"""`chunked.attention` with the namespace bound, or a compiled version of it: called as
``core(q, k, v, logits, gates, state, counts, plan, causal=, return_state=, gather=,
slab=, depth=)``."""


def attention(inp: Inputs, state: State, *, causal: bool, return_state: bool, chunk: int,
              slab: int, core: Core | None = None, scan: Scan | None = None,
              bucket: bool = False, check: Callable[[Any], bool] | None = None,
              ) -> tuple[Any, State | None]:
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
    bucket : pad the call's chunks, sequences, rows and widths D and Dv up to a few sizes
        (`bucket_size`) with inert zeros, so that a compiled `core` meets few shapes (each
        one compiles); the padding is cropped from the results.
    check : reads the form's flag of default logits past the dtype's range (0-d bool) on the
        host; None: ``bool(flag)``. A library that traces calls returns False for a traced
        flag, which cannot be read (the error of spec 8 is then not raised).

    Returns
    -------
    out : (*B, N, Dv) array of the input dtype.
    state : the state after the call (leading axes *B, or (S, *B)), if `return_state`.
    """
    xp, n, batch = inp.xp, inp.n, inp.batch
    d, dv = inp.q.shape[-1], inp.v.shape[-1]
    if n == 0:
        out = xp.zeros((*batch, 0, dv), dtype=inp.dtype)
        return out, (state if return_state else None)
    packed = inp.offsets is not None
    lengths = tuple(b - a for a, b in zip(inp.offsets[:-1], inp.offsets[1:], strict=True)) \
        if packed else (n,)
    held = state.length if packed else (state.length,)
    rows, real = math.prod(batch), sum(-(-size // chunk) for size in lengths)
    given = Shape(real, len(lengths), rows, d, dv)
    if bucket:  # the chunks, sequences, rows and widths a compiled form is made for
        size = Shape(bucket_size(real), bucket_size(len(lengths)), bucket_size(rows),
                     _width(d), _width(dv))
    else:
        size = given
    slab = max(1, min(slab, size.chunks))
    size = size._replace(chunks=-(-size.chunks // slab) * slab)
    tokens = size.chunks * chunk if bucket and (packed or size.chunks * chunk != n) else n
    device = _device(inp.q)

    def grown(x: Any, *tail: int) -> Any:  # (*B, N, ...) as (R, N, ...), zero-padded
        if x is None:
            return None
        flat = xp.reshape(x, (rows, n, *x.shape[len(batch) + 1:]))
        return _padded(xp, flat, (size.rows, tokens, *tail))

    q, k, v = grown(inp.q, size.d), grown(inp.k, size.d), grown(inp.v, size.dv)
    logits, *gates = (grown(x) for x in (inp.logits, inp.first, inp.higher, inp.zero))
    start = state if packed else _one(xp, state)
    counts = xp.asarray(held + (0,) * (size.sequences - len(held)), dtype=xp.int32,
                        device=device)
    begin = State(length=0,
                  **{name: _padded(xp, xp.reshape(x, (len(held), rows, *_widths(name, given))),
                                   (size.sequences, size.rows, *_widths(name, size)))
                     for name, x in _arrays(start).items()})
    layout = chunk_plan(lengths + (0,) * (size.sequences - len(lengths)), chunk, slab, xp,
                        device=device, chunks=size.chunks, tokens=tokens)
    if core is None:
        core = functools.partial(chunked.attention, xp, scan=scan)
    # One sequence's state costs little: taking it always halves what a compiler meets.
    whole = return_state or (causal and size.sequences == 1)
    options = {"causal": causal, "return_state": whole, "gather": packed or tokens != n,
               "slab": slab,
               "depth": xp.asarray(d, dtype=inp.compute_dtype)}
    with np.errstate(all="ignore"):  # NumPy's warnings on non-finite input (spec 8)
        result = core(q, k, v, logits, tuple(gates), begin, counts, layout, **options)
    read = (lambda flag: bool(flag)) if check is None else check
    if inp.logits is None and read(result.overflow):
        check_default_logits(xp, xp.asarray([math.inf], dtype=inp.compute_dtype), inp.k)
    out = xp.reshape(result.out[:rows, :n, :dv], (*batch, n, dv))
    out = xp.astype(out, inp.dtype)
    if not return_state:
        return out, None
    after = tuple(a + b for a, b in zip(held, lengths, strict=True))
    ends = {name: xp.reshape(_cropped(x, (len(lengths), rows, *_widths(name, given))),
                             (len(lengths), *batch, *_widths(name, given)))
            for name, x in _arrays(result.state).items()}
    end = State(length=after, **ends)
    return out, (end if packed else State(length=after[0], **_arrays(end, rows=0)))


class Shape(NamedTuple):
    """The sizes a call's arrays take in the form: chunks, sequences, rows, D, Dv."""

    chunks: int
    sequences: int
    rows: int
    d: int
    dv: int


def _widths(name: str, size: Shape) -> tuple[int, ...]:
    """The trailing shape of the state's array `name` for widths D and Dv of `size`."""
    return {"kv": (3, size.d, size.dv), "key_sum": (size.d,)}.get(name, ())


def _width(size: int) -> int:
    """The bucket of a vector width: 8 for up to 8 (padding costs little there), else
    `bucket_size`."""
    return max(8, bucket_size(size))


def _padded(xp: Any, x: Any, shape: tuple[int, ...]) -> Any:
    """`x` followed by zeros along every axis up to `shape` (unchanged where it fits)."""
    for axis, (have, want) in enumerate(zip(x.shape, shape, strict=True)):
        if have < want:
            grown = (*x.shape[:axis], want - have, *x.shape[axis + 1:])
            x = xp.concat([x, xp.zeros(grown, dtype=x.dtype, device=_device(x))], axis=axis)
    return x


def _cropped(x: Any, shape: tuple[int, ...]) -> Any:
    """The leading `shape` block of `x`."""
    return x[tuple(slice(0, size) for size in shape)]


def bucket_size(size: int) -> int:
    """The smallest power of two up to 16, or m 2^e (m = 8..15) beyond, that is at least
    `size`: few sizes where calls are small (their compilations would cost more than their
    padding), at most 12.5% more and eight sizes an octave where they are large."""
    if size <= 16:
        return 1 << max(size - 1, 0).bit_length()
    scale = 1 << (size.bit_length() - 4)  # size / scale lies in [8, 16)
    return -(-size // scale) * scale


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
