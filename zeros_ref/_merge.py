"""The merge of states (spec 5.3): the state of a concatenation from its pieces' states.

Two pieces a (first) and b, each summarised from the empty state with explicit logits, make
the state of their concatenation with

    n = n_a + n_b                       M = max(m_a, m_b) over the non-empty pieces
    F = e_a F_a + e_b F_b               E = e_a E_a + e_b E_b      e_x = exp(m_x - M) <= 1
    sbar - M = (n_a (sbar_a - M) + n_b (sbar_b - M)) / n
    G = G_a + (sbar_a - sbar) H_a + G_b + (sbar_b - sbar) H_b
    H = H_a + H_b                       key_sum = key_sum_a + key_sum_b

F and E change frame to the common running max; G, each piece's first-order sum about its own
mean, moves to the common mean. Every mean is formed relative to M, so the precision follows
the spread of the logits, not their magnitude. The operation is associative, and an empty
piece is its identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any

from array_api_compat import array_namespace

from ._state import State

__all__ = ["merge_states"]


def merge_states(states: Sequence[State]) -> State:
    """The state of the concatenation of pieces, from their states in sequence order.

    Parameters
    ----------
    states : sequence of State
        One state per piece, each from the empty state with explicit logits (spec 5.3), all
        with the same leading axes *B (or (S, *B) for packed states, merged sequence by
        sequence), D, Dv and dtype.

    Returns
    -------
    State
        The state of the whole: leading axes and dtype of the pieces, `length` their sum.

    Raises
    ------
    ValueError
        Naming `states` where it is empty or its states do not share leading axes, D and Dv.
    """
    states = list(states)
    if not states:
        raise ValueError("`states` is empty: merge_states needs at least one state")
    shape = states[0].kv.shape
    for j, st in enumerate(states):
        if not isinstance(st, State):
            raise TypeError(f"`states[{j}]` is a {type(st).__name__}, not a zeros_ref State")
        if st.kv.shape != shape:
            raise ValueError(f"`states[{j}]` has sums of shape {tuple(st.kv.shape)}, but "
                             f"`states[0]` has {tuple(shape)}: the pieces must share leading "
                             "axes, D and Dv")
    return reduce(_merge_two, states)


def _counts(xp: Any, state: State, like: Any) -> Any:
    """n of every row, as an array of `like`'s dtype broadcasting against `like` (*B,)."""
    length = state.length
    if isinstance(length, tuple):  # packed: one count per sequence, axis 0
        counts = xp.asarray(length, dtype=like.dtype, device=getattr(like, "device", None))
        return xp.reshape(counts, (len(length),) + (1,) * (like.ndim - 1))
    return xp.asarray(length, dtype=like.dtype)


def _merge_two(a: State, b: State) -> State:
    """The state of piece a followed by piece b (module docstring)."""
    xp = array_namespace(a.kv, b.kv)
    na, nb = _counts(xp, a, a.running_max), _counts(xp, b, b.running_max)
    n = na + nb
    held_a, held_b = na > 0, nb > 0
    top = xp.where(held_a & held_b, xp.maximum(a.running_max, b.running_max),
                   xp.where(held_a, a.running_max, b.running_max))
    zero = xp.zeros_like(top)

    def frame(st: State, held: Any) -> tuple[Any, Any]:
        """exp(m - M) and sbar - M of a piece (0 for an empty one)."""
        shift = xp.where(held, st.running_max - top, zero)
        return xp.where(held, xp.exp(shift), zero), xp.where(held, st.mean_offset + shift, zero)

    (ea, mean_a), (eb, mean_b) = frame(a, held_a), frame(b, held_b)
    mean = (na * mean_a + nb * mean_b) / xp.where(n > 0, n, xp.ones_like(n))  # sbar - M

    def sums(slot: int, st: State) -> Any:
        return st.kv[..., slot, :, :]

    def per_row(x: Any) -> Any:  # (*B,) -> (*B, 1, 1)
        return x[..., None, None]

    f = per_row(ea) * sums(State.F, a) + per_row(eb) * sums(State.F, b)
    g = (sums(State.G, a) + per_row(mean_a - mean) * sums(State.H, a)
         + sums(State.G, b) + per_row(mean_b - mean) * sums(State.H, b))
    h = sums(State.H, a) + sums(State.H, b)
    kv = xp.stack(_slots(f, g, h), axis=-3)
    length = (tuple(x + y for x, y in zip(a.length, b.length, strict=True))
              if isinstance(a.length, tuple) else a.length + b.length)
    return State(length=length, running_max=top, mean_offset=mean,
                 normaliser=ea * a.normaliser + eb * b.normaliser, kv=kv,
                 key_sum=a.key_sum + b.key_sum)


def _slots(f: Any, g: Any, h: Any) -> list[Any]:
    """F, G and H in the order of `State`'s slots."""
    slots = [None, None, None]
    slots[State.F], slots[State.G], slots[State.H] = f, g, h
    return slots
