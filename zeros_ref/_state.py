"""The carried state of a causal prefix (spec section 5).

With ``w_i = exp(s_i - m)`` and ``sbar`` the mean of the prefix logits, the state of a prefix
of length n is everything `attention` needs to continue it:

    F = sum_i w_i kh_i v_i^T            E = sum_i w_i          m = max_i s_i
    G = sum_i (s_i - sbar) kh_i v_i^T   mean = sbar - m
    H = sum_i kh_i v_i^T                key_sum = sum_i k_i    (for the default logits)

Storing the mean relative to the running max keeps it exact to the spread of the logits
rather than to their magnitude (ZS-STAB-OFFSET).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from array_api_compat import array_namespace

__all__ = ["State"]


@dataclass(frozen=True)
class State:
    """Summary of a causal prefix; pass it back to `attention` to continue the sequence.

    Backends build a state with keywords (``State(length=..., running_max=..., ...)``) and
    address the sums by slot (``kv[..., State.G, :, :]``), never by position.

    A packed call (spec 5.2) takes and returns one state per sequence: the arrays have the
    leading axes (S, *B) and `length` holds the n of each sequence (`sequence`, `stack`).

    Attributes
    ----------
    length : int, or tuple of int for a packed state
        n, the number of tokens absorbed (of each sequence). A backend whose rows hold
        different counts may carry an integer array (*B,) instead; `rows`, `merge` and
        `with_batch` then split, join and reshape it with the rows.
    running_max : (*B,) array
        m, the largest logit of the prefix (meaningless while ``length == 0``).
    mean_offset : (*B,) array
        ``sbar - m``, the mean logit of the prefix relative to `running_max`.
    normaliser : (*B,) array
        ``E = sum_i exp(s_i - m)``, at least 1 once ``length > 0``.
    kv : (*B, 3, D, Dv) array
        ``F``, ``G`` and ``H`` stacked on axis -3, in the slots ``State.F``, ``State.G`` and
        ``State.H``.
    key_sum : (*B, D) array
        Sum of the raw keys, the running mean the default logits need.
    """

    F: ClassVar[int] = 0
    G: ClassVar[int] = 1
    H: ClassVar[int] = 2

    length: int | tuple[int, ...]
    running_max: Any
    mean_offset: Any
    normaliser: Any
    kv: Any
    key_sum: Any

    @classmethod
    def empty(
        cls, xp: Any, batch: tuple[int, ...], d: int, dv: int, *, dtype: Any, device: Any
    ) -> State:
        """The state of an empty prefix."""

        def zeros(*shape: int) -> Any:
            return xp.zeros((*batch, *shape), dtype=dtype, device=device)

        return cls(length=0, running_max=zeros(), mean_offset=zeros(), normaliser=zeros(),
                   kv=zeros(3, d, dv), key_sum=zeros(d))

    @classmethod
    def stack(cls, xp: Any, states: Sequence[State]) -> State:
        """The packed state of the sequences' `states` (each of leading axes *B): arrays of
        leading axes (S, *B), the lengths as a tuple (spec 5.2)."""
        return cls(length=tuple(int(st.length) for st in states),
                   **{f.name: xp.stack([getattr(st, f.name) for st in states])
                      for f in fields(cls) if f.name != "length"})

    @property
    def packed(self) -> bool:
        """Whether this is the state of a packed call: one state per sequence."""
        return isinstance(self.length, tuple)

    def sequence(self, j: int) -> State:
        """The state of sequence j of a packed state (leading axes *B)."""
        return State(length=self.length[j],
                     **{f.name: getattr(self, f.name)[j, ...]
                        for f in fields(self) if f.name != "length"})

    def _map(self, function: Any) -> State:
        """The state with `function(array, trailing axes)` applied to every array field (and
        to `length` where it is an array of per-row counts)."""
        trailing = {"running_max": 0, "mean_offset": 0, "normaliser": 0, "kv": 3, "key_sum": 1}
        length = self.length
        if _per_row(length):
            length = function(length, 0)
        return State(length=length, **{name: function(getattr(self, name), tail)
                                       for name, tail in trailing.items()})

    def with_batch(self, xp: Any, batch: tuple[int, ...]) -> State:
        """The same state with its leading axes *B reshaped to `batch` (same element count).

        Backends that work on one flattened batch axis use it both ways: ``(prod(B),)`` and
        back to B.
        """
        return self._map(lambda x, tail: xp.reshape(x, (*batch, *x.shape[x.ndim - tail:])))

    def rows(self, index: Any) -> State:
        """The rows `index` of a state with one leading axis (b,): a `slice` (views of this
        state's arrays) or an integer array (copies)."""
        if isinstance(index, slice):
            return self._map(lambda x, tail: x[index, ...])
        xp = array_namespace(self.kv, index)
        return self._map(lambda x, tail: xp.take(x, index, axis=0))

    @classmethod
    def merge(cls, parts: Sequence[tuple[Any, State]]) -> State:
        """One state of b rows from ``(index, state)`` parts that cover rows 0..b-1 once.

        The inverse of `rows`: ``State.merge([(i, s.rows(i)) for i in split])`` equals ``s``
        for any split of ``arange(b)`` into disjoint index arrays.
        """
        xp = array_namespace(*(i for i, _ in parts), *(st.kv for _, st in parts))
        index = xp.concat([i for i, _ in parts])
        order = xp.argsort(index)  # row r of the result is row order[r] of the concatenation
        in_order = bool(xp.all(order == xp.arange(order.shape[0], dtype=order.dtype)))

        def merged(name: str) -> Any:
            rows = xp.concat([getattr(st, name) for _, st in parts])
            return rows if in_order else xp.take(rows, order, axis=0)

        length = parts[0][1].length
        return cls(length=merged("length") if _per_row(length) else length,
                   **{f.name: merged(f.name) for f in fields(cls) if f.name != "length"})


def _per_row(length: Any) -> bool:
    """Whether a state's `length` is an array of per-row counts (not an int or a tuple)."""
    return hasattr(length, "shape")
