"""State merges with one planted mistake each (spec 5.3, feature "merge").

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| unframed | F and E of the pieces added as they are, each in its own frame | ZS-STREAM-MERGE |
| unmoved_g | G of the pieces added, each about its own mean, not the common one | ZS-STREAM-MERGE |

Both are the reference backend, whose correct merge (`zeros_ref.merge_states`) is their twin;
each mutant takes it pair by pair and undoes one of its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import reduce

import numpy as np

import zeros_ref
from zeros_backends.reference import ReferenceBackend

State = zeros_ref.State


def _slot(state: State, slot: int) -> np.ndarray:
    return state.kv[..., slot, :, :]


class _Spoilt(ReferenceBackend):
    """The correct merge of each pair, then `spoilt` undoes one of its steps."""

    def merge_states(self, states: Sequence[State]) -> State:
        return reduce(lambda a, b: self.spoilt(zeros_ref.merge_states([a, b]), a, b), states)

    def spoilt(self, merged: State, a: State, b: State) -> State:
        raise NotImplementedError


class Unframed(_Spoilt):
    """F and E summed without the frame change exp(m_x - M)."""

    name = "unframed-merge"

    def spoilt(self, merged: State, a: State, b: State) -> State:
        kv = merged.kv.copy()
        kv[..., State.F, :, :] = _slot(a, State.F) + _slot(b, State.F)
        return replace(merged, kv=kv, normaliser=a.normaliser + b.normaliser)


class UnmovedG(_Spoilt):
    """G summed about each piece's own mean."""

    name = "unmoved-g-merge"

    def spoilt(self, merged: State, a: State, b: State) -> State:
        kv = merged.kv.copy()
        kv[..., State.G, :, :] = _slot(a, State.G) + _slot(b, State.G)
        return replace(merged, kv=kv)


unframed = Unframed()
unmoved_g = UnmovedG()
