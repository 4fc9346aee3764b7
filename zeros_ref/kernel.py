"""The kernel API: what a backend author reuses from the reference.

A backend computes ZeroS its own way (spec section 10) but should fail the way the reference
fails and fall back to the reference's exact step where its fast path cannot go. These names
are public and keep their meaning within a spec version:

`check_call`, `check_inputs`, `Inputs`
    Validation of an attention call (spec section 8): the same errors with the same messages,
    and the inputs broadcast to common leading axes in the compute dtype.
`State`
    The carried state of a causal prefix (spec section 5), with named fields, the slots
    ``State.F``, ``State.G``, ``State.H`` of its stacked sums, and methods to reshape its
    leading axes and to split and merge its rows.
`causal_step`
    The exact chunk step of spec 4.2: outputs of one chunk and the state after it.
`append`, `merge_states`, `read_whole`
    The state after tokens whose outputs are not wanted, the state of a concatenation from
    its pieces' states (spec 5.3), and the bidirectional outputs of queries reading a
    whole sequence's state (spec 4.3): what context parallelism needs.
`unit`
    Unit directions along the last axis, exact for any finite scale, zero for zero vectors.
`host_offsets`
    The offsets of a packed call's `cu_seqlens` (spec 5.2) read on the host and checked, for
    a backend that lays out a chunk plan once and passes the offsets to `check_call`.
`deviation_logits`, `running_mean_logits`, `check_default_logits`
    The default logits (ZS-LOG-DEFAULT), from scratch or continuing a carried key sum, and
    the error for finite keys whose default logits are past the dtype's range (spec 8).

Examples
--------
A backend's `attention` starts by validating its call:

>>> import numpy as np
>>> from zeros_ref import kernel
>>> q = k = v = np.ones((2, 5, 4))
>>> inp, state = kernel.check_call(q, k, v, logits=None, first=1.0, higher=1.0, zero=0.0,
...                                causal=True, state=None, return_state=True)
>>> inp.batch, inp.n, state.length
((2,), 5, 0)
>>> kernel.check_call(q, k[..., :3], v, logits=None, first=1.0, higher=1.0, zero=0.0,
...                   causal=True, state=None, return_state=False)
Traceback (most recent call last):
ValueError: `k` must have the same last axis as `q`; got 3 and 4
"""

from ._attention import DEFAULT_CHUNK_SIZE, check_call
from ._chunked import append, causal_step, read_whole
from ._directions import unit
from ._logits import check_default_logits, deviation_logits, running_mean_logits
from ._merge import merge_states
from ._state import State
from ._validate import Inputs, check_inputs
from ._varlen import host_offsets

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Inputs",
    "State",
    "append",
    "causal_step",
    "check_call",
    "check_default_logits",
    "check_inputs",
    "deviation_logits",
    "host_offsets",
    "merge_states",
    "read_whole",
    "running_mean_logits",
    "unit",
]
