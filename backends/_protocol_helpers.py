"""What every backend shares around its kernel: call validation and the flattened state.

Validation is the reference's own (`zeros_ref._validate.check_inputs` and the state check of
`zeros_ref.attention`), called in the same order, so a backend raises the same errors with the
same messages (spec section 8, ZS-ERR-*). Kernels work on one flattened batch axis b (the
product of the leading axes *B); `flatten_state` and `unflatten_state` move a `zeros_ref.State`
between the two layouts (spec section 5).
"""

from __future__ import annotations

import math
from typing import Any

from zeros_ref import State
from zeros_ref._attention import _check_state
from zeros_ref._validate import Inputs, check_inputs

__all__ = ["check_call", "flatten_state", "unflatten_state"]


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
) -> tuple[Inputs, State]:
    """Validate one attention call exactly as `zeros_ref.attention` does.

    Returns
    -------
    inputs : zeros_ref._validate.Inputs
        q, k : (*B, N, D); v : (*B, N, Dv); logits : (*B, N) or None; gates : (*B, N); all in
        the compute dtype (float32 for half-precision inputs).
    state : zeros_ref.State
        The given state, or the empty state of the inputs' batch, D, Dv and compute dtype.

    Raises
    ------
    TypeError, ValueError
        As `zeros_ref.attention` (ZS-ERR-SHAPE, ZS-ERR-DTYPE, ZS-ERR-STATE).
    """
    inp = check_inputs(q, k, v, logits, first, higher, zero)
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool; got {type(causal).__name__}")
    if not causal and (state is not None or return_state):
        raise ValueError("`state` and `return_state` need causal=True: only a causal prefix "
                         "can be continued")
    return inp, _check_state(state, inp)


def flatten_state(xp: Any, state: State, batch: tuple[int, ...]) -> State:
    """The state with its leading axes *B merged into one axis b = prod(*B).

    Shapes: running_max, mean_offset, normaliser (b,); kv (b, 3, D, Dv); key_sum (b, D).
    """
    b = math.prod(batch)

    def flat(x: Any, tail: int) -> Any:
        return xp.reshape(x, (b, *x.shape[x.ndim - tail:]))

    return State(
        state.length,
        flat(state.running_max, 0),
        flat(state.mean_offset, 0),
        flat(state.normaliser, 0),
        flat(state.kv, 3),
        flat(state.key_sum, 1),
    )


def unflatten_state(xp: Any, state: State, batch: tuple[int, ...]) -> State:
    """Inverse of `flatten_state`: the batch axis b split back into *B."""

    def unflat(x: Any, tail: int) -> Any:
        return xp.reshape(x, (*batch, *x.shape[x.ndim - tail:]))

    return State(
        state.length,
        unflat(state.running_max, 0),
        unflat(state.mean_offset, 0),
        unflat(state.normaliser, 0),
        unflat(state.kv, 3),
        unflat(state.key_sum, 1),
    )
