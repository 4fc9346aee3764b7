"""`attention`: the public O(N) entry point (spec sections 3-5)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from array_api_compat import device

from ._chunked import run
from ._quiet import quietly
from ._state import State
from ._validate import Inputs, check_causal, check_inputs
from ._varlen import check_cu_seqlens, empty_states, run_packed

__all__ = ["DEFAULT_CHUNK_SIZE", "attention", "check_call"]

DEFAULT_CHUNK_SIZE = 64
"""Chunk length C of the reference; any C >= 1 gives the same result to rounding."""


def _check_state(state: Any, inp: Inputs) -> State:
    xp, batch = inp.xp, inp.batch
    d, dv = inp.q.shape[-1], inp.v.shape[-1]
    count = None if inp.offsets is None else len(inp.offsets) - 1  # S of a packed call
    if state is None:
        if count is not None:
            return empty_states(inp, count)
        return State.empty(xp, batch, d, dv, dtype=inp.compute_dtype, device=device(inp.q))
    if not isinstance(state, State):
        raise TypeError(f"`state` must be a zeros_ref.State; got {type(state).__name__}")
    if count is None and state.packed:
        raise ValueError(f"`state` holds the states of {len(state.length)} packed sequences; "
                         "pass the `cu_seqlens` it was made for")
    if count is not None and not state.packed:
        raise ValueError("`state` holds one state per row, but a packed call (cu_seqlens) "
                         "needs one per sequence, with leading axes (S, *B)")
    if count is not None and len(state.length) != count:
        raise ValueError(f"`state` holds the states of {len(state.length)} sequences but "
                         f"`cu_seqlens` gives {count}")
    expected = (*batch, 3, d, dv) if count is None else (count, *batch, 3, d, dv)
    layout = "(*B, 3, D, Dv)" if count is None else "(S, *B, 3, D, Dv)"
    if tuple(state.kv.shape) != expected:
        raise ValueError(
            f"`state` was made for shape {tuple(state.kv.shape)} {layout} but these "
            f"inputs need {expected}"
        )
    if state.kv.dtype != inp.compute_dtype:
        raise TypeError(
            f"`state` holds dtype {state.kv.dtype} but these inputs compute in "
            f"{inp.compute_dtype}"
        )
    return state


def check_call(
    q: Any,
    k: Any,
    v: Any,
    *,
    logits: Any,
    first: Any,
    higher: Any,
    zero: Any,
    causal: Any,
    state: Any,
    return_state: Any,
    cu_seqlens: Any = None,
    offsets: tuple[int, ...] | None = None,
) -> tuple[Inputs, State]:
    """Validate the arguments of `attention` (spec section 8); backends call it too, so that
    they raise the same errors with the same messages.

    Returns the validated inputs (broadcast, in the compute dtype; ``inp.offsets`` holds the
    sequence boundaries of a packed call) and the starting state: the given one, or the empty
    state of the inputs' batch, D, Dv and compute dtype (one per sequence when packed).
    A backend that already holds the offsets of `cu_seqlens` on the host (from a chunk plan
    made from them) passes them as `offsets`, and `cu_seqlens` is then not read.
    """
    inp = check_inputs(q, k, v, logits, first, higher, zero)
    if cu_seqlens is not None:
        inp = replace(inp, offsets=check_cu_seqlens(inp.xp, cu_seqlens, inp.n, device(inp.q),
                                                    offsets=offsets))
    check_causal(causal)
    if not causal and (state is not None or return_state):
        raise ValueError("`state` and `return_state` need causal=True: only a causal prefix "
                         "can be continued")
    return inp, _check_state(state, inp)


@quietly
def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    logits: Any = None,
    first: Any = 1.0,
    higher: Any = 1.0,
    zero: Any = 0.0,
    causal: bool = True,
    state: State | None = None,
    return_state: bool = False,
    cu_seqlens: Any = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Any:
    """ZeroS attention in O(N) time and O(C^2 + D Dv) working memory per head.

    Parameters
    ----------
    q, k : (..., N, D) arrays of one real floating dtype, namespace and device.
        Only their directions enter the weights (ZS-DEF-COSINE).
    v : (..., N, Dv) array.
    logits : (..., N) array or None
        Radial logit s_i of each key. None means the deviation logit of the raw keys
        (ZS-LOG-DEFAULT): ``deviation_logits(k, mu=0, tau=1, causal=causal)``.
    first, higher, zero : float or array broadcastable to (..., N)
        Gates g1, gh, g0 of each query step (ZS-DEF-GATES). The defaults give
        ``r = softmax(s) - 1/t``.
    causal : bool
        Causal (prefix) weights if True, bidirectional (whole sequence) if False.
    state : State or None
        State returned by an earlier call on the preceding part of the sequence (causal only);
        in a packed call, one per sequence (leading axes (S, *B)).
    return_state : bool
        Also return the state after this input (causal only).
    cu_seqlens : (S + 1,) integer array or None
        Offsets ``0 = o_0 <= ... <= o_S = N`` of S sequences packed along the time axis of
        every row (spec 5.2): tokens ``o_j .. o_{j+1} - 1`` are attended to as a sequence of
        their own. An array of the inputs' library and device.
    chunk_size : int >= 1
        Chunk length C; affects speed and rounding only.

    Returns
    -------
    output : (..., N, Dv) array of the input's namespace, dtype and device; leading axes are
        the broadcast of all inputs' leading axes.
    state : State, only if `return_state`.

    Notes
    -----
    ``out_t = sum_{i<=t} r[t,i] cos(q_t, k_i) v_i`` with
    ``r[t,i] = gh_t p[t,i] + (g1_t - gh_t) (s_i - sbar_t)/t + (g0_t - gh_t)/t`` (ZS-DEF-WEIGHTS),
    evaluated by the chunked form of spec section 4. Half-precision inputs are computed in
    float32 and the output is rounded once at the end (ZS-DTYPE-HALF).

    References
    ----------
    spec/zeros-spec.md: ``ZS-DEF-*``, ``ZS-ON-*``, ``ZS-STREAM-*``, ``ZS-STAB-*``, ``ZS-ERR-*``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 5, 4))
    >>> attention(q, k, v).shape
    (2, 5, 4)
    """
    inp, start = check_call(q, k, v, logits=logits, first=first, higher=higher, zero=zero,
                            causal=causal, state=state, return_state=return_state,
                            cu_seqlens=cu_seqlens)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1; got {chunk_size!r}")

    def step(one: Inputs, st: State) -> tuple[Any, State]:
        return run(inp.xp, one, st, causal=causal, chunk_size=chunk_size)

    out, end = step(inp, start) if inp.offsets is None else run_packed(inp, start, step)
    out = inp.xp.astype(out, inp.dtype, copy=False)
    return (out, end) if return_state else out
