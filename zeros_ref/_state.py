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

from dataclasses import dataclass
from typing import Any

__all__ = ["State"]


@dataclass(frozen=True)
class State:
    """Summary of a causal prefix; pass it back to `attention` to continue the sequence.

    Attributes
    ----------
    length : int
        n, the number of tokens absorbed.
    running_max : (*B,) array
        m, the largest logit of the prefix (meaningless while ``length == 0``).
    mean_offset : (*B,) array
        ``sbar - m``, the mean logit of the prefix relative to `running_max`.
    normaliser : (*B,) array
        ``E = sum_i exp(s_i - m)``, at least 1 once ``length > 0``.
    kv : (*B, 3, D, Dv) array
        ``F``, ``G`` and ``H`` stacked on axis -3.
    key_sum : (*B, D) array
        Sum of the raw keys, the running mean the default logits need.
    """

    length: int
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

        return cls(0, zeros(), zeros(), zeros(), zeros(3, d, dv), zeros(d))

    def with_batch(self, xp: Any, batch: tuple[int, ...]) -> State:
        """The same state with its leading axes *B reshaped to `batch` (same element count).

        Backends that work on one flattened batch axis use it both ways: ``(prod(B),)`` and
        back to B.
        """

        def shaped(x: Any, tail: int) -> Any:
            return xp.reshape(x, (*batch, *x.shape[x.ndim - tail:]))

        return State(self.length, shaped(self.running_max, 0), shaped(self.mean_offset, 0),
                     shaped(self.normaliser, 0), shaped(self.kv, 3), shaped(self.key_sum, 1))
