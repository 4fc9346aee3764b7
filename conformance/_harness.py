"""What every check needs: the context of a run, cases, and measurements.

A check is a function ``check(ctx) -> Iterable[Measurement]`` registered for one requirement
ID with `check`. It raises `NotApplicable` when the backend's claims leave nothing to check.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import zeros_ref

from . import protocol
from ._compare import TOLERANCE, Comparison, compare, output_scale

__all__ = [
    "CHECKS",
    "Check",
    "Context",
    "Expected",
    "Measurement",
    "NotApplicable",
    "Run",
    "Scale",
    "agreement",
    "check",
    "raises",
    "random_inputs",
    "reference",
    "run_backend",
]

GATE_NAMES = ("first", "higher", "zero")


class NotApplicable(Exception):
    """Nothing to check for this backend (a dtype or feature it does not claim)."""


@dataclass
class Measurement:
    """One measured quantity against its limit, with what is needed to reproduce it."""

    value: float
    limit: float
    case: dict[str, Any]
    quantity: str = "error"
    message: str = ""
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """What a report may plot: ``row_errors`` (the error of each output row of a failed
    comparison, `Comparison.rows`) and ``rows_per_entry``."""

    def __post_init__(self) -> None:
        if self.passed is None:
            self.passed = bool(self.value <= self.limit)

    @classmethod
    def of(cls, result: Comparison, case: dict[str, Any]) -> Measurement:
        """The measurement of a comparison with the reference (`compare`)."""
        details = {}
        if result.rows:
            details = {"row_errors": list(result.rows), "rows_per_entry": result.rows_per_entry}
        return cls(result.error, result.tolerance, case, message=result.describe(),
                   passed=result.passed, details=details)


def _argument(value: Any) -> Any:
    """How a call's argument appears in a reproduction record."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype} array {list(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


@dataclass
class Context:
    """One conformance run: the backend, what it claims, the profile and the seed.

    `target` is how the backend was named (registry name, ``module:attr`` or ``file.py:attr``);
    checks that grow with N run in a child process that loads it again from there.
    """

    backend: Any
    target: str
    profile: str = "full"
    seed: int = 0
    dtypes: tuple[str, ...] = ()
    features: frozenset[str] = field(default_factory=frozenset)
    last_call: dict[str, Any] = field(default_factory=dict)
    """The arguments of the latest `attention` call, reported when a backend raises."""

    def __post_init__(self) -> None:
        self.dtypes = self.dtypes or protocol.usable_dtypes(self.backend)
        self.features = self.features or protocol.features(self.backend)

    def attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        """The backend's `attention`, remembering the call's shapes, dtypes and options."""
        arguments = {"q": q, "k": k, "v": v, **options}
        self.last_call = {"seed": self.seed,
                          **{name: _argument(value) for name, value in arguments.items()}}
        return self.backend.attention(q, k, v, **options)

    @property
    def quick(self) -> bool:
        return self.profile == "quick"

    def rng(self, salt: str) -> np.random.Generator:
        """A generator fixed by the run's seed and the caller's `salt` (reproducible)."""
        return np.random.default_rng([self.seed, zlib.crc32(salt.encode())])

    def claims(self, feature: str) -> bool:
        return feature in self.features

    def modes(self) -> tuple[bool, ...]:
        """Causal modes to test: both when "bidirectional" is claimed."""
        return (True, False) if self.claims("bidirectional") else (True,)

    def logit_kinds(self) -> tuple[str, ...]:
        """Logits to test (`random_inputs`): "explicit", and "default" (``logits=None``)
        when "default_logits" is claimed."""
        return ("explicit", "default") if self.claims("default_logits") else ("explicit",)

    def precise_dtype(self) -> str:
        """The most precise claimed dtype."""
        return self.dtypes[-1]


@dataclass(frozen=True)
class Check:
    requirement: str
    function: Callable[[Context], Iterable[Measurement]]
    grows: bool = False
    """Its inputs grow past ~1e4 tokens: it runs guarded (a child process with limits)."""


CHECKS: list[Check] = []


def check(requirement: str, *, grows: bool = False) -> Callable:
    """Register a check function for a requirement ID (`grows`: see `Check.grows`)."""

    def register(function: Callable[[Context], Iterable[Measurement]]) -> Callable:
        CHECKS.append(Check(requirement, function, grows))
        return function

    return register


def random_inputs(
    rng: np.random.Generator,
    batch: tuple[int, ...],
    n: int,
    d: int,
    dv: int,
    *,
    logits: str = "explicit",
    gates: str = "random",
    logit_scale: float = 3.0,
) -> dict[str, Any]:
    """Float64 inputs of one case.

    logits: "explicit" (normal * logit_scale) or "default" (None). gates: "random"
    (per-step uniform in [-1, 2], all three unequal), "scalar" (three unequal floats) or
    "default" (1, 1, 0).
    """
    inputs: dict[str, Any] = {
        "q": rng.normal(size=(*batch, n, d)),
        "k": rng.normal(size=(*batch, n, d)),
        "v": rng.normal(size=(*batch, n, dv)),
        "logits": rng.normal(size=(*batch, n)) * logit_scale if logits == "explicit" else None,
    }
    if gates == "random":
        inputs.update({g: rng.uniform(-1.0, 2.0, size=(*batch, n)) for g in GATE_NAMES})
    elif gates == "scalar":
        inputs.update(zip(GATE_NAMES, (float(x) for x in rng.uniform(-1.0, 2.0, size=3))))
    else:
        inputs.update(first=1.0, higher=1.0, zero=0.0)
    return inputs


def describe(inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The reproduction record of a case: shapes and kinds of its inputs."""
    record: dict[str, Any] = {
        "q": list(inputs["q"].shape),
        "v": list(inputs["v"].shape),
        "logits": "default" if inputs["logits"] is None else "explicit",
    }
    for g in GATE_NAMES:
        value = inputs[g]
        record[g] = round(value, 6) if isinstance(value, float) else list(np.shape(value))
    record.update(extra)
    return record


def tokens(inputs: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    """The inputs of the tokens a .. b-1: a piece of a stream or one packed sequence."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            value = value[..., a:b, :] if name in ("q", "k", "v") else value[..., a:b]
        out[name] = value
    return out


def rounded(ctx: Context, inputs: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The inputs as the backend sees them in `dtype`, back in float64 numpy; the arrays of a
    nested dict (a layer's parameters) too."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            b = ctx.backend
            value = np.asarray(b.to_numpy(b.from_numpy(value, dtype)), dtype=np.float64)
        elif isinstance(value, dict):
            value = rounded(ctx, value, dtype)
        out[name] = value
    return out


def run_backend(ctx: Context, inputs: dict[str, Any], dtype: str, **options: Any) -> Any:
    """Call the backend's attention on `inputs` converted to `dtype`; returns its result."""
    b = ctx.backend
    args = {
        name: b.from_numpy(value, dtype) if isinstance(value, np.ndarray) else value
        for name, value in inputs.items()
    }
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return ctx.attention(q, k, v, **args, **options)


def as_numpy(ctx: Context, x: Any) -> np.ndarray:
    return np.asarray(ctx.backend.to_numpy(x), dtype=np.float64)


def reference(inputs: dict[str, Any], *, causal: bool) -> np.ndarray:
    """The float64 reference output for float64 numpy inputs."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    options = {name: inputs[name] for name in ("logits", *GATE_NAMES)}
    return zeros_ref.attention(q, k, v, causal=causal, **options)


def reference_logits(inputs: dict[str, Any], *, causal: bool) -> np.ndarray:
    """The logits the definition uses: the given ones or the default (ZS-LOG-DEFAULT)."""
    if inputs["logits"] is not None:
        return inputs["logits"]
    return zeros_ref.deviation_logits(inputs["k"], causal=causal)


def scale_of(inputs: dict[str, Any], *, causal: bool) -> np.ndarray:
    """Output scale of every row (spec 7.1), float64 (*B, N)."""
    s = reference_logits(inputs, causal=causal)
    gates = [np.asarray(inputs[g], dtype=np.float64) for g in GATE_NAMES]
    return output_scale(inputs["v"], s, *gates, causal=causal)


Run = Callable[[], np.ndarray]
"""How a check runs the backend on one case: its output as float64 numpy."""
Expected = Callable[[dict[str, Any]], np.ndarray]
"""The expected output, given the inputs as the backend sees them (`rounded`)."""
Scale = Callable[[dict[str, Any], np.ndarray], np.ndarray]
"""The error scale of every output row, given the rounded inputs and the expected output."""


def agreement(
    ctx: Context,
    inputs: dict[str, Any],
    dtype: str,
    *,
    causal: bool = True,
    run: Run | None = None,
    expected: Expected | None = None,
    scale: Scale | None = None,
    case: dict[str, Any] | None = None,
    **record: Any,
) -> Measurement:
    """Run one case in `dtype` and compare with the float64 expectation on the rounded inputs.

    Parameters
    ----------
    ctx : Context
        The run.
    inputs : dict
        Float64 numpy inputs of the case (`random_inputs`); the arrays of a nested dict are
        rounded too.
    dtype : str
        The dtype the backend computes in.
    causal : bool
        The mode of the default run, reference and scale.
    run : callable, optional
        How the backend is run, ``run() -> float64 numpy output``; default: one `attention`
        call on `inputs` (`run_backend`). Whatever it raises is recorded as a failed
        measurement.
    expected : callable, optional
        ``expected(rounded_inputs)``, the output to agree with; default: the reference
        `zeros_ref.attention` (for the explicit definition, golden files or the layer).
    scale : callable, optional
        ``scale(rounded_inputs, expected)``, the error scale of every row; default: the output
        scale of spec 7.1 (`scale_of`).
    case : dict, optional
        The reproduction record; default: `describe` of the inputs with the dtype, the mode
        and `record`.
    **record
        More of the default reproduction record.

    Returns
    -------
    Measurement
        The comparison within `TOLERANCE` of the dtype, or an infinite error where `run`
        raised.
    """
    seen = rounded(ctx, inputs, dtype)
    if case is None:
        case = describe(inputs, dtype=dtype, causal=causal, **record)
    try:
        if run is None:
            out = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=causal))
        else:
            out = run()
    except Exception as exc:
        return Measurement(np.inf, TOLERANCE[dtype], case, message=f"raised {exc!r}")
    want = reference(seen, causal=causal) if expected is None else expected(seen)
    rows = scale_of(seen, causal=causal) if scale is None else scale(seen, want)
    return Measurement.of(compare(out, want, rows, TOLERANCE[dtype]), case)


def raises(call: Any, kind: tuple[type, ...], name: str, case: dict[str, Any]) -> Measurement:
    """Measurement of a call that must raise `kind` with a message naming `name`."""
    try:
        call()
    except kind as exc:
        named = re.search(rf"\b{re.escape(name)}\b", str(exc)) is not None
        message = f"{type(exc).__name__}: {exc}"
        return Measurement(0.0 if named else 1.0, 0.0, case, quantity="unnamed argument",
                           message=message if named else f"message does not name {name}: {message}")
    except Exception as exc:
        return Measurement(1.0, 0.0, case, quantity="wrong exception",
                           message=f"expected {'/'.join(k.__name__ for k in kind)}, got {exc!r}")
    return Measurement(1.0, 0.0, case, quantity="no exception", message="no exception raised")
