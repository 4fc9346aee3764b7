"""The backend protocol (spec section 10): what the suite, the bench and the reports may ask of
a backend, in one place.

`Backend` types the required attributes of spec 10.1. Every optional attribute is read through
its accessor here, which carries the one rule for a backend without it:

============== ================================================ =============================
attribute      accessor                                         when absent
============== ================================================ =============================
features       `features(b)` (with "core")                      all but "layer", unless `layer`
device         `device(b) -> str`                               "cpu"
synchronize()  `synchronize(b) -> Callable[[], None]`           a function that does nothing
memory_peak()  `memory_peak(b) -> MemoryPeak | None`            None (the suite measures the
                                                                resident size of a process)
gradients()    `gradients(b) -> Gradients | None`               None
layer()        `layer(b) -> Layer | None`                       None
chunk_size     `chunk_size(b) -> int`                           the reference's chunk length
slab_size      `slab_size(b) -> int | None`                     None (no slabs)
workers        `workers(b) -> int | None`                       None (the backend's own choice)
============== ================================================ =============================

The last three are *tuning attributes*, which the spec's checks never read: the bench reports
them, counts the chunked form's flops with `chunk_size`, and times a backend on one thread by
setting `workers` (`is_threaded`). `name(b)` and `usable_dtypes(b)` read the required
attributes of a backend that may lack them (`protocol_problems` says what is wrong), for
reports that must still be written.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeGuard

import numpy as np

import zeros_ref

__all__ = [
    "ATTENTION_KEYWORDS",
    "DTYPES",
    "FEATURES",
    "STATE_KEYWORDS",
    "Backend",
    "Gradients",
    "Layer",
    "MemoryPeak",
    "MergeStates",
    "Threaded",
    "chunk_size",
    "device",
    "features",
    "gradients",
    "is_threaded",
    "layer",
    "memory_peak",
    "merge_states",
    "name",
    "protocol_problems",
    "slab_size",
    "synchronize",
    "usable_dtypes",
    "workers",
]

DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Dtype names a backend may claim, from least to most precise."""

FEATURES = frozenset({"bidirectional", "state", "default_logits", "grad", "layer", "varlen",
                      "merge"})
"""Optional features (spec 10.2); "core" is always required."""
IMPLIED = frozenset({"bidirectional", "state", "default_logits", "grad"})
"""What a backend without a `features` attribute claims (spec 10.1), with "layer" when it has
a `layer` method; later features ("varlen", "merge") are claimed explicitly only."""


class Backend(Protocol):
    """The required attributes of spec 10.1 (an instance or a module may provide them)."""

    name: str
    """A short name."""
    dtypes: tuple[str, ...]
    """A non-empty subset of `DTYPES`."""

    def from_numpy(self, x: np.ndarray, dtype: str) -> Any:
        """A backend array of `dtype` (on the backend's device) from a numpy array."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """A numpy array from a backend array."""
        ...

    def attention(self, q: Any, k: Any, v: Any, *, logits: Any = None, first: Any = 1.0,
                  higher: Any = 1.0, zero: Any = 0.0, causal: bool = True, state: Any = None,
                  return_state: bool = False) -> Any:
        """ZeroS attention of the spec; gates are Python floats or backend arrays; with
        ``return_state=True`` the output and the final state."""
        ...


ATTENTION_KEYWORDS = tuple(
    parameter.name for parameter in inspect.signature(Backend.attention).parameters.values()
    if parameter.kind is parameter.KEYWORD_ONLY)
"""The keyword names of `attention`, the contract of ZS-API-KEYWORDS, in order."""
STATE_KEYWORDS = ("state", "return_state")
"""Those of the "state" feature."""


class Gradients(Protocol):
    """``gradients(...)`` (feature "grad"): float64 gradients of ``sum(output * cotangent)``
    keyed by argument name, for numpy float64 inputs."""

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cotangent: np.ndarray, *,
                 logits: Any, first: Any, higher: Any, zero: Any,
                 causal: bool) -> dict[str, np.ndarray]: ...


class Layer(Protocol):
    """``layer(...)`` (feature "layer"): the layer of spec section 13; ``state`` and
    ``return_state`` too with the feature "state"."""

    def __call__(self, x: Any, params: dict[str, Any], *, heads: int, causal: bool = True,
                 first_layer: bool = False, rope: str | None = "half", norm: bool = True,
                 state: Any = None, return_state: bool = False) -> Any: ...


class MergeStates(Protocol):
    """``merge_states(states)`` (feature "merge"): the state of the concatenation of pieces
    from their states, in sequence order (spec 5.3)."""

    def __call__(self, states: Sequence[Any]) -> Any: ...


MemoryPeak = Callable[[Callable[[], Any]], int]
"""``memory_peak(fn)``: peak bytes allocated while ``fn()`` runs, beyond those allocated before
it, of memory the process's resident size does not show (device memory)."""


class Threaded(Protocol):
    """A backend with the tuning attribute `workers`, which callers may set for a while."""

    workers: int | None
    """Worker threads the backend splits its rows over; None: one per CPU."""


def _optional(backend: object, attribute: str) -> Any:
    """The attribute, or None where the backend has none (the only lookup by name)."""
    return getattr(backend, attribute, None)


def _callable(backend: object, attribute: str) -> Any:
    method = _optional(backend, attribute)
    return method if callable(method) else None


def name(backend: object) -> str:
    """The backend's `name`, or "?" where it has none (ZS-API-PROTOCOL fails it)."""
    value = _optional(backend, "name")
    return "?" if value is None else str(value)


def usable_dtypes(backend: object) -> tuple[str, ...]:
    """The claimed dtypes that are known, in the order of `DTYPES` (empty without `dtypes`)."""
    claimed = _optional(backend, "dtypes") or ()
    return tuple(d for d in DTYPES if d in claimed)


def gradients(backend: object) -> Gradients | None:
    """The backend's `gradients` method, or None."""
    return _callable(backend, "gradients")


def layer(backend: object) -> Layer | None:
    """The backend's `layer` method, or None."""
    return _callable(backend, "layer")


def merge_states(backend: object) -> MergeStates | None:
    """The backend's `merge_states` method, or None."""
    return _callable(backend, "merge_states")


def features(backend: object) -> frozenset[str]:
    """The features the backend claims, plus "core". Without a `features` attribute: those
    of `IMPLIED`, and "layer" when the backend has a `layer` method (spec 10.1)."""
    claimed = _optional(backend, "features")
    if claimed is None:
        claimed = IMPLIED | ({"layer"} if layer(backend) is not None else set())
    return frozenset({"core"}) | frozenset(claimed)


def device(backend: object) -> str:
    """Where the backend's arrays live, for the reports: its `device`, else "cpu"."""
    value = _optional(backend, "device")
    return "cpu" if value is None else str(value)


def _nothing() -> None:
    """What `synchronize` gives for a backend with no queued work to wait for."""


def synchronize(backend: object) -> Callable[[], None]:
    """The backend's `synchronize` (waits for queued device work; timings call it after each
    call), else a function that does nothing."""
    return _callable(backend, "synchronize") or _nothing


def memory_peak(backend: object) -> MemoryPeak | None:
    """The backend's `memory_peak(fn)` method if it has one, else None: then the process's
    resident size shows the memory (spec 10.1)."""
    return _callable(backend, "memory_peak")


def chunk_size(backend: object) -> int:
    """Tuning: the chunk length C of the backend's chunked form; without `chunk_size`, that of
    the reference (`zeros_ref.DEFAULT_CHUNK_SIZE`)."""
    value = _optional(backend, "chunk_size")
    return zeros_ref.DEFAULT_CHUNK_SIZE if value is None else int(value)


def slab_size(backend: object) -> int | None:
    """Tuning: how many chunks the backend computes together as one group (a slab), or None
    for a backend without slabs."""
    value = _optional(backend, "slab_size")
    return None if value is None else int(value)


def is_threaded(backend: object) -> TypeGuard[Threaded]:
    """Whether the backend has the tuning attribute `workers` (which callers may set)."""
    return hasattr(backend, "workers")


def workers(backend: object) -> int | None:
    """Tuning: the worker threads the backend splits its rows over; None (also without
    `workers`) leaves the choice to the backend, one thread per CPU at most."""
    return backend.workers if is_threaded(backend) else None


def protocol_problems(backend: object) -> list[str]:
    """What is missing or malformed in the backend's protocol attributes (ZS-API-PROTOCOL)."""
    problems = []
    if not isinstance(_optional(backend, "name"), str):
        problems.append("`name` must be a str")
    dtypes = _optional(backend, "dtypes")
    if not isinstance(dtypes, tuple) or not dtypes or not set(dtypes) <= set(DTYPES):
        problems.append(f"`dtypes` must be a non-empty tuple drawn from {DTYPES}; got {dtypes!r}")
    for method in ("from_numpy", "to_numpy", "attention"):
        if _callable(backend, method) is None:
            problems.append(f"`{method}` must be callable")
    claimed = _optional(backend, "features")
    if claimed is not None:
        if not isinstance(claimed, frozenset):
            problems.append(f"`features` must be a frozenset; got {type(claimed).__name__}")
        elif not claimed <= FEATURES:
            problems.append(f"`features` names unknown features {sorted(claimed - FEATURES)}")
        elif "grad" in claimed and gradients(backend) is None:
            problems.append('`features` claims "grad" but `gradients` is not callable')
        elif "layer" in claimed and layer(backend) is None:
            problems.append('`features` claims "layer" but `layer` is not callable')
        elif "merge" in claimed and merge_states(backend) is None:
            problems.append('`features` claims "merge" but `merge_states` is not callable')
    return problems
