"""The versioned golden set (spec section 11, ZS-ACC-GOLDEN).

Float64 inputs and outputs of the reference for a fixed list of cases, stored as data in the
conformance package so that a backend can be checked without running `zeros_ref`, and so that a
change of the reference's results shows up as a change of versioned files.

Layout of the golden directory (``zeros_conformance/golden/`` by default):

- one ``<name>.npz`` per case, with the float64 arrays ``q`` (*B, N, D), ``k`` (*B, N, D),
  ``v`` (*B, N, Dv), ``logits`` (*B, N) (explicit logits only; absent means ``logits=None``),
  the gates ``first``, ``higher``, ``zero`` ((*B, N) arrays, or 0-d arrays for Python numbers),
  the bool 0-d array ``causal`` and the output ``out`` (*B, N, Dv);
- ``MANIFEST.json``: the format and golden-set versions, the spec version and generator, and
  per case its file, the file's SHA-256 and descriptive metadata.

The directory holds exactly the manifest and the files it lists; `verify` reports anything
else. Files are written deterministically (fixed zip timestamps, no compression, fixed array
order), so regenerating on one machine gives byte-identical files; across machines the outputs
agree to rounding (the tests compare them scale-relatively, not byte by byte).

The golden outputs come from `zeros_ref.attention` and are cross-checked at generation time
against the explicit definition `zeros_ref.explicit_attention`; the reference itself is
checked against an independent mpmath evaluation elsewhere, so these files do not vouch for
themselves.

The files live in a hashed store (`_store`); this module is the case catalogue: what each
case is, how its inputs are drawn, and how it is loaded. Command line::

    zeros-conformance golden verify [--dir D]
    zeros-conformance golden regenerate [--dir D]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import zeros_ref
from zeros_ref import __version__ as reference_version

from . import _store
from ._compare import compare, output_scale
from ._store import MANIFEST_NAME
from ._store import IntegrityError as GoldenIntegrityError

__all__ = [
    "CASES",
    "FORMAT",
    "GOLDEN_VERSION",
    "MANIFEST_NAME",
    "GoldenCase",
    "GoldenIntegrityError",
    "GoldenSpec",
    "default_directory",
    "generate",
    "load",
    "regenerate",
    "verify",
]

FORMAT = 1
"""Version of the file layout described in the module docstring."""

GOLDEN_VERSION = "1"
"""Version of the case list and its data; bump it whenever a stored output changes."""

GENERATION_TOLERANCE = 1e-12
"""Largest scale-relative difference allowed between the O(N) and explicit forms at generation."""

LOGIT_KINDS = ("explicit", "default", "wide", "offset", "equal")
GATE_KINDS = ("default", "scalar", "random")

WIDE_RANGE = 1e4
"""Span of the "wide" logits (ZS-STAB-RANGE)."""

OFFSET = 1e4
"""Constant added to the wide logits for the "offset" kind (ZS-STAB-OFFSET)."""

EQUAL_LOGIT = 2.5
"""Common value of the "equal" logits."""

GATE_RANGE = (-1.0, 2.0)
"""Gates of the "scalar" and "random" kinds are drawn uniformly from this interval."""

@dataclass(frozen=True)
class GoldenSpec:
    """Declarative description of one golden case.

    Attributes
    ----------
    name : file stem of the case, unique in `CASES`.
    seed : seed of ``numpy.random.default_rng`` that draws every input of the case.
    batch : leading axes B of all arrays.
    n, d, dv : sequence length N, query/key length D, value length Dv.
    causal : causal (prefix) or bidirectional weights.
    logits : "explicit" (standard normal times `logit_scale`), "default" (``logits=None``),
        "wide" (uniform over a span of `WIDE_RANGE`, first key at the bottom and last key at
        the top of the span), "offset" (wide plus `OFFSET`) or "equal" (all `EQUAL_LOGIT`).
    gates : "default" (1, 1, 0), "scalar" (three unequal numbers drawn from `GATE_RANGE`) or
        "random" (per-step (*B, N) arrays drawn from `GATE_RANGE`).
    zero_q, zero_k : set query rows 0, 3, 6, ... / key rows 1, 4, 7, ... to zero vectors.
    logit_scale : standard deviation of the "explicit" logits.
    description : one line for the manifest.
    """

    name: str
    seed: int
    batch: tuple[int, ...]
    n: int
    d: int
    dv: int
    causal: bool
    logits: str = "explicit"
    gates: str = "default"
    zero_q: bool = False
    zero_k: bool = False
    logit_scale: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.logits not in LOGIT_KINDS:
            raise ValueError(f"`logits` must be one of {LOGIT_KINDS}; got {self.logits!r}")
        if self.gates not in GATE_KINDS:
            raise ValueError(f"`gates` must be one of {GATE_KINDS}; got {self.gates!r}")
        if min(self.n, self.d, self.dv) < 1:
            raise ValueError(f"case {self.name!r}: N, D and Dv must be >= 1")

    @property
    def file(self) -> str:
        """Name of the case's data file."""
        return f"{self.name}.npz"

    @property
    def degenerate(self) -> list[str]:
        """Tags of the degenerate inputs of the case (ZS-STAB-DEGENERATE)."""
        flags = {
            "zero_q": self.zero_q,
            "zero_k": self.zero_k,
            "equal_logits": self.logits == "equal",
            "N=1": self.n == 1,
            "D=1": self.d == 1,
            "Dv=1": self.dv == 1,
        }
        return [tag for tag, on in flags.items() if on]


def _case(name: str, seed: int, shape: tuple[Any, ...], causal: bool, description: str,
          **options: Any) -> GoldenSpec:
    """Shorthand for `GoldenSpec`: ``shape = (batch, N, D, Dv)``."""
    batch, n, d, dv = shape
    return GoldenSpec(name, seed, batch, n, d, dv, causal, description=description, **options)


CASES: tuple[GoldenSpec, ...] = (
    # Both modes with the defaults of section 3.
    _case("causal_default", 101, ((), 17, 8, 8), True,
          "default logits and gates, odd N", logits="default"),
    _case("bidir_default", 102, ((), 17, 8, 8), False,
          "default logits and gates, odd N, bidirectional", logits="default"),
    # Explicit logits, around the reference's chunk length 64.
    _case("causal_explicit_n64", 103, ((), 64, 16, 8), True,
          "explicit logits, default gates, N = one chunk"),
    _case("bidir_explicit_n64", 104, ((), 64, 16, 8), False,
          "explicit logits, default gates, bidirectional"),
    _case("causal_explicit_random_gates_n65", 105, ((2,), 65, 8, 8), True,
          "explicit logits, per-step gates, N = one chunk + 1", gates="random"),
    _case("bidir_explicit_random_gates_n63", 106, ((2,), 63, 8, 8), False,
          "explicit logits, per-step gates, N = one chunk - 1, bidirectional", gates="random"),
    _case("causal_default_random_gates_n200", 107, ((), 200, 8, 4), True,
          "default logits, per-step gates, several chunks", gates="random", logits="default"),
    _case("bidir_default_random_gates_n200", 108, ((), 200, 8, 4), False,
          "default logits, per-step gates, bidirectional", gates="random", logits="default"),
    _case("causal_scalar_gates", 109, ((), 64, 8, 8), True,
          "explicit logits (sd 3), unequal scalar gates", gates="scalar", logit_scale=3.0),
    _case("bidir_scalar_gates", 110, ((), 65, 8, 8), False,
          "explicit logits (sd 3), unequal scalar gates, bidirectional", gates="scalar",
          logit_scale=3.0),
    # Leading axes.
    _case("causal_leading_2x3", 111, ((2, 3), 17, 8, 4), True,
          "leading axes (2, 3), explicit logits, per-step gates", gates="random"),
    _case("bidir_leading_2x3", 112, ((2, 3), 17, 8, 4), False,
          "leading axes (2, 3), default logits, scalar gates, bidirectional", gates="scalar",
          logits="default"),
    # Stability: wide ranges and offsets (section 6).
    _case("causal_wide_n200", 113, ((), 200, 8, 4), True,
          "logits spanning 1e4, early keys far below the global max, per-step gates",
          logits="wide", gates="random"),
    _case("causal_wide_default_gates", 114, ((), 64, 8, 4), True,
          "logits spanning 1e4, default gates", logits="wide"),
    _case("bidir_wide_n65", 115, ((), 65, 8, 4), False,
          "logits spanning 1e4, per-step gates, bidirectional", logits="wide", gates="random"),
    _case("causal_offset_n200", 116, ((), 200, 8, 4), True,
          "logits spanning 1e4 plus 1e4, per-step gates", logits="offset", gates="random"),
    _case("bidir_offset_n64", 117, ((), 64, 8, 4), False,
          "logits spanning 1e4 plus 1e4, scalar gates, bidirectional", logits="offset",
          gates="scalar"),
    # Degenerate inputs (ZS-STAB-DEGENERATE).
    _case("causal_equal_logits", 118, ((), 17, 8, 8), True,
          "all logits equal (f = h = 0), per-step gates", logits="equal", gates="random"),
    _case("bidir_equal_logits", 119, ((), 17, 8, 8), False,
          "all logits equal, scalar gates, bidirectional", logits="equal", gates="scalar"),
    _case("causal_zero_q", 120, ((), 17, 8, 8), True,
          "zero query rows 0, 3, 6, ... (their outputs are 0), per-step gates",
          gates="random", zero_q=True),
    _case("causal_zero_k_default_logits", 121, ((), 17, 8, 8), True,
          "zero key rows 1, 4, 7, ..., default logits, per-step gates", logits="default",
          gates="random", zero_k=True),
    _case("bidir_zero_qk", 122, ((2,), 63, 8, 8), False,
          "zero query and key rows, per-step gates, bidirectional", gates="random",
          zero_q=True, zero_k=True),
    _case("causal_n1", 123, ((), 1, 8, 8), True,
          "N = 1: out = g0 cos v, per-step gates", gates="random"),
    _case("bidir_n1_default_logits", 124, ((), 1, 8, 8), False,
          "N = 1, default logits, scalar gates, bidirectional", logits="default",
          gates="scalar"),
    _case("causal_n2", 125, ((3,), 2, 8, 8), True,
          "N = 2, scalar gates", gates="scalar"),
    _case("causal_d1", 126, ((), 64, 1, 8), True,
          "D = 1 (cosines are +-1), per-step gates", gates="random"),
    _case("bidir_d1_default_logits", 127, ((), 17, 1, 8), False,
          "D = 1, default logits, bidirectional", logits="default"),
    _case("causal_dv1", 128, ((), 65, 8, 1), True,
          "Dv = 1, per-step gates", gates="random"),
)
"""Every case of the golden set, in manifest order."""


@dataclass(frozen=True)
class GoldenCase:
    """One loaded golden case.

    Attributes
    ----------
    name, description : from the manifest.
    causal : the mode of the case; pass it as ``causal=``.
    inputs : ``q`` (*B, N, D), ``k`` (*B, N, D), ``v`` (*B, N, Dv) float64 arrays, ``logits``
        (*B, N) only when explicit (absent means ``logits=None``), and the gates ``first``,
        ``higher``, ``zero`` as (*B, N) arrays or Python floats. ``f(**inputs, causal=causal)``
        is the call that produced `expected`.
    expected : (*B, N, Dv) float64 output of the reference.
    """

    name: str
    description: str
    causal: bool
    inputs: dict[str, Any] = field(repr=False)
    expected: np.ndarray = field(repr=False)

    def logits(self) -> np.ndarray:
        """The logits the case uses, (*B, N): explicit, or the default deviation logits."""
        if "logits" in self.inputs:
            return self.inputs["logits"]
        return zeros_ref.deviation_logits(self.inputs["k"], causal=self.causal)

    def output_scale(self) -> np.ndarray:
        """Output scale of every row (spec 7.1), shape (*B, N)."""
        gates = [np.asarray(self.inputs[g]) for g in ("first", "higher", "zero")]
        return output_scale(self.inputs["v"], self.logits(), *gates, causal=self.causal)


# --- Generation -------------------------------------------------------------------------------


def _draw_logits(spec: GoldenSpec, rng: np.random.Generator) -> np.ndarray | None:
    """Logits of the case, (*B, N), or None for the default logits."""
    shape = (*spec.batch, spec.n)
    if spec.logits == "default":
        return None
    if spec.logits == "explicit":
        return rng.normal(size=shape) * spec.logit_scale
    if spec.logits == "equal":
        return np.full(shape, EQUAL_LOGIT)
    half = WIDE_RANGE / 2
    wide = WIDE_RANGE * (rng.random(shape) - 0.5)  # (*B, N) in [-half, half)
    wide[..., 0] = -half  # the first prefix sits a whole span below the global max
    wide[..., -1] = half
    return wide + (OFFSET if spec.logits == "offset" else 0.0)


def _draw_gates(spec: GoldenSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gates of the case: 0-d arrays for numbers, (*B, N) arrays for per-step gates."""
    if spec.gates == "default":
        values = [np.asarray(1.0), np.asarray(1.0), np.asarray(0.0)]
    elif spec.gates == "scalar":
        values = [np.asarray(g) for g in rng.uniform(*GATE_RANGE, size=3)]
    else:
        values = list(rng.uniform(*GATE_RANGE, size=(3, *spec.batch, spec.n)))  # 3 x (*B, N)
    return dict(zip(("first", "higher", "zero"), values, strict=True))


def _draw_inputs(spec: GoldenSpec) -> dict[str, np.ndarray]:
    """All stored inputs of a case, drawn in a fixed order from ``default_rng(spec.seed)``."""
    rng = np.random.default_rng(spec.seed)
    q = rng.normal(size=(*spec.batch, spec.n, spec.d))  # (*B, N, D)
    k = rng.normal(size=(*spec.batch, spec.n, spec.d))  # (*B, N, D)
    v = rng.normal(size=(*spec.batch, spec.n, spec.dv))  # (*B, N, Dv)
    if spec.zero_q:
        q[..., ::3, :] = 0.0
    if spec.zero_k:
        k[..., 1::3, :] = 0.0
    inputs = {"q": q, "k": k, "v": v}
    logits = _draw_logits(spec, rng)
    if logits is not None:
        inputs["logits"] = logits
    inputs.update(_draw_gates(spec, rng))
    return inputs


def _call_args(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Stored inputs as call arguments: 0-d gates become Python floats."""
    args: dict[str, Any] = {}
    for key in ("q", "k", "v", "logits", "first", "higher", "zero"):
        if key in arrays:
            value = arrays[key]
            args[key] = float(value) if value.ndim == 0 else value
    return args


def _cross_check(spec: GoldenSpec, case: GoldenCase) -> None:
    """Raise `RuntimeError` unless the O(N) output is finite and equals the explicit form."""
    if not np.all(np.isfinite(case.expected)):
        raise RuntimeError(f"golden case {spec.name!r}: the reference output is not finite")
    explicit = zeros_ref.explicit_attention(**case.inputs, causal=spec.causal)
    result = compare(case.expected, explicit, case.output_scale(), GENERATION_TOLERANCE)
    if not result.passed:
        raise RuntimeError(
            f"golden case {spec.name!r}: zeros_ref.attention and explicit_attention disagree: "
            f"{result.describe()}"
        )


def generate(spec: GoldenSpec) -> dict[str, np.ndarray]:
    """Inputs and reference output of one case, as the arrays stored in its file.

    Returns
    -------
    dict of float64 arrays ``q``, ``k``, ``v``, [``logits``], ``first``, ``higher``, ``zero``,
    the bool 0-d ``causal`` and the output ``out`` (*B, N, Dv), in storage order.

    Raises
    ------
    RuntimeError
        If the O(N) reference and the explicit definition differ by more than
        `GENERATION_TOLERANCE` relative to the output scale.
    """
    arrays = _draw_inputs(spec)
    args = _call_args(arrays)
    out = zeros_ref.attention(**args, causal=spec.causal)  # (*B, N, Dv)
    case = GoldenCase(spec.name, spec.description, spec.causal, args, out)
    _cross_check(spec, case)
    return {**arrays, "causal": np.asarray(spec.causal), "out": out}


# --- The directory ----------------------------------------------------------------------------


def _manifest(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "golden_version": GOLDEN_VERSION,
        "spec_version": zeros_ref.SPEC_VERSION,
        "generator": f"zeros_ref {reference_version}",
        "cases": entries,
    }


def _manifest_entry(spec: GoldenSpec, sha256: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "file": spec.file,
        "sha256": sha256,
        "causal": spec.causal,
        "logits": spec.logits,
        "gates": spec.gates,
        "shape": {"batch": list(spec.batch), "N": spec.n, "D": spec.d, "Dv": spec.dv},
        "degenerate": spec.degenerate,
        "description": spec.description,
    }


def default_directory() -> Path:
    """The golden directory shipped in the package: ``zeros_conformance/golden/``."""
    return Path(__file__).resolve().parent / "golden"


def _root(directory: str | Path | None) -> Path:
    return Path(directory) if directory is not None else default_directory()


def regenerate(directory: str | Path | None = None) -> None:
    """Write every case of `CASES` and the manifest into `directory` (created if needed).

    Stale ``.npz`` files of cases no longer in `CASES` are removed; other files are left alone
    (and reported by `verify`).
    """
    root = _root(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries = [_manifest_entry(spec, _store.write_arrays(root / spec.file, generate(spec)))
               for spec in CASES]
    _store.remove_unlisted(root, {spec.file for spec in CASES})
    _store.write_manifest(root, _manifest(entries))


def verify(directory: str | Path | None = None) -> list[str]:
    """Check the golden directory against its manifest.

    Returns
    -------
    list of str
        One message per problem, each naming the file at fault: a missing or unreadable
        manifest, a listed file that is missing or whose SHA-256 differs, a file present but not
        listed. Empty when the directory is intact.
    """
    return _store.problems(_root(directory), format=FORMAT)


def load(directory: str | Path | None = None, *, check_hashes: bool = True) -> list[GoldenCase]:
    """Load every golden case, in manifest order.

    Parameters
    ----------
    directory : the golden directory; the package's ``golden/`` by default.
    check_hashes : check the directory against its manifest first (see `verify`).

    Returns
    -------
    list of GoldenCase

    Raises
    ------
    GoldenIntegrityError
        With `check_hashes`, if any file is edited, missing or unlisted; the message names it.
    """
    root = _root(directory)
    problems = verify(root) if check_hashes else []
    manifest, unreadable = _store.read_manifest(root, format=FORMAT)
    if problems or manifest is None:
        raise GoldenIntegrityError("golden set fails verification: "
                                   + "; ".join(problems or unreadable))
    cases = []
    for entry in manifest["cases"]:
        arrays = _store.read_arrays(root / entry["file"])
        cases.append(GoldenCase(name=entry["name"], description=entry.get("description", ""),
                                causal=bool(arrays["causal"]), inputs=_call_args(arrays),
                                expected=arrays["out"]))
    return cases
