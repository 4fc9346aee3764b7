"""Packed variable-length batches (spec section 5.2, ZS-VARLEN-*, ZS-ERR-VARLEN).

S sequences lie one after the other along the time axis of every row, at the offsets
``cu_seqlens = [o_0 = 0, o_1, ..., o_S = T]``: tokens ``o_j .. o_{j+1} - 1`` are sequence j.
Each sequence is attended to as if it were alone, so the reference runs them one by one on
slices, which is the definition itself; a fast backend computes them all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from typing import Any

import array_api_compat

from ._state import State
from ._validate import Inputs, namespace_of

__all__ = ["check_cu_seqlens", "empty_states", "host_offsets", "run_packed",
           "sequence_inputs"]


def _host_values(x: Any) -> list[int]:
    """The entries of a 1-D integer array as Python ints (a read on the host)."""
    tolist = getattr(x, "tolist", None)
    if callable(tolist):
        return [int(v) for v in tolist()]
    return [int(x[i]) for i in range(x.shape[0])]


def host_offsets(cu_seqlens: Any) -> tuple[int, ...]:
    """The offsets ``(o_0, ..., o_S)`` of `cu_seqlens` as Python ints (one read on the host),
    checked to be a 1-D integer array that starts at 0 and never decreases.

    Raises
    ------
    TypeError
        Not an array, or not of an integer dtype.
    ValueError
        Not 1-D, empty, not starting at 0, or decreasing.
    """
    xp = namespace_of(cu_seqlens, "cu_seqlens")
    if not xp.isdtype(cu_seqlens.dtype, "integral"):
        raise TypeError(f"`cu_seqlens` must have an integer dtype; got {cu_seqlens.dtype}")
    if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] == 0:
        raise ValueError("`cu_seqlens` must be a 1-D array [0, o_1, ..., T] of the sequence "
                         f"offsets; got shape {tuple(cu_seqlens.shape)}")
    offsets = tuple(_host_values(cu_seqlens))
    if offsets[0] != 0:
        raise ValueError(f"`cu_seqlens` must start at 0; got {offsets[0]}")
    drops = [j for j in range(1, len(offsets)) if offsets[j] < offsets[j - 1]]
    if drops:
        j = drops[0]
        raise ValueError(f"`cu_seqlens` must not decrease; got {offsets[j - 1]} then "
                         f"{offsets[j]} at entries {j - 1} and {j}")
    return offsets


def check_cu_seqlens(xp: Any, cu_seqlens: Any, n: int, device: Any, *,
                     offsets: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Validate `cu_seqlens` for inputs of namespace `xp`, length T = `n` and `device`.

    Returns the offsets ``(o_0, ..., o_S)`` as Python ints: read from `cu_seqlens` with
    `host_offsets`, or, where the caller already holds them (a backend's chunk plan made from
    these `cu_seqlens`), the given `offsets`, checked against its shape without a read.

    Raises
    ------
    TypeError
        Not an array of the inputs' library, or not of an integer dtype.
    ValueError
        Not 1-D, empty, on another device, not starting at 0, decreasing, or not ending at T.
    """
    if namespace_of(cu_seqlens, "cu_seqlens") is not xp:
        raise TypeError("`cu_seqlens` must be an array of the same library as `q`; got "
                        f"{type(cu_seqlens).__name__}")
    where = array_api_compat.device(cu_seqlens)
    if where != device and None not in (where, device):  # None: unknown (a JAX tracer's)
        raise ValueError(f"`cu_seqlens` is on device {array_api_compat.device(cu_seqlens)} "
                         f"but `q` is on {device}")
    if offsets is None:
        offsets = host_offsets(cu_seqlens)
    elif tuple(cu_seqlens.shape) != (len(offsets),):
        raise ValueError(f"`cu_seqlens` has shape {tuple(cu_seqlens.shape)} but its chunk "
                         f"plan holds {len(offsets)} offsets")
    if offsets[-1] != n:
        raise ValueError(f"`cu_seqlens` must end at the length T = {n} of the inputs; got "
                         f"{offsets[-1]}")
    return offsets


def sequence_inputs(inp: Inputs, a: int, b: int) -> Inputs:
    """The validated inputs of the tokens a .. b-1 alone (one sequence of a packed call)."""
    def span(x: Any) -> Any:
        return x[..., a:b]

    def rows(x: Any) -> Any:
        return x[..., a:b, :]

    return replace(inp, q=rows(inp.q), k=rows(inp.k), v=rows(inp.v),
                   logits=None if inp.logits is None else span(inp.logits),
                   first=span(inp.first), higher=span(inp.higher), zero=span(inp.zero),
                   offsets=None)


def empty_states(inp: Inputs, count: int) -> State:
    """The packed state of `count` empty sequences: leading axes (count, *B)."""
    xp = inp.xp
    empty = State.empty(xp, (count, *inp.batch), inp.q.shape[-1], inp.v.shape[-1],
                        dtype=inp.compute_dtype, device=array_api_compat.device(inp.q))
    return replace(empty, length=(0,) * count)


Step = Callable[[Inputs, State], tuple[Any, State]]


def run_packed(inp: Inputs, start: State, step: Step) -> tuple[Any, State]:
    """Outputs (*B, T, Dv) and final packed state of a packed call, sequence by sequence.

    `step(inputs, state)` computes one sequence from its own starting state (the j-th of the
    packed `start`) and returns its outputs and final state; the outputs are concatenated in
    sequence order along the time axis and the states stacked on a new leading axis.
    """
    xp = inp.xp
    outputs, states = [], []
    for j, (a, b) in enumerate(pairwise(inp.offsets)):
        out, end = step(sequence_inputs(inp, a, b), start.sequence(j))
        outputs.append(out)
        states.append(end)
    if not outputs:  # S = 0, hence T = 0
        return inp.v[..., :0, :] * 0, empty_states(inp, 0)
    return xp.concat(outputs, axis=-2), State.stack(xp, states)
