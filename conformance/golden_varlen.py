"""The packed golden set (spec sections 5.2, 11 and 13; ZS-VARLEN-EQUAL, ZS-LAYER-VARLEN):
float64 inputs, sequence offsets and outputs of packed calls of the reference, in the hashed
store (`_store`) of ``golden_varlen/``.

Two kinds of case share the directory and its manifest (each entry names its ``kind``):

- ``attention``: ``q`` (*B, T, D), ``k`` (*B, T, D), ``v`` (*B, T, Dv), ``logits`` (*B, T)
  (explicit logits only; absent means ``logits=None``), the gates ``first``, ``higher``,
  ``zero`` ((*B, T) arrays, or 0-d arrays for Python numbers), the bool 0-d ``causal``, the
  offsets ``cu_seqlens`` (S + 1,) int64 and the output ``out`` (*B, T, Dv) of
  ``zeros_ref.attention(..., cu_seqlens=cu_seqlens)``;
- ``layer``: ``x`` (*B, T, Dm), every parameter as ``param_<name>``, the options ``heads``,
  ``causal``, ``first_layer``, ``norm`` and ``rope`` as in `golden_layer`, ``cu_seqlens``
  and the output ``out`` (*B, T, Dm) of ``zeros_ref.layer(..., cu_seqlens=cu_seqlens)``.

At generation every output is cross-checked against the explicit O(N^2) definition on each
sequence alone (`zeros_ref.explicit_attention` with `cu_seqlens`; the layer with an explicit
core), within `GENERATION_TOLERANCE` of each sequence's row scale; the tests check the stored
outputs against an independent mpmath evaluation on each slice.

Command line: ``zeros-conformance golden verify|regenerate --set varlen`` (and ``all``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

import zeros_ref

from . import _store
from ._compare import compare, output_scale
from ._store import MANIFEST_NAME, IntegrityError

__all__ = ["CASES", "FORMAT", "KINDS", "MANIFEST_NAME", "IntegrityError", "PackedCase",
           "PackedLayerCase", "PackedLayerSpec", "PackedSpec", "attention_cases",
           "default_directory", "generate", "layer_cases", "load", "offsets_of", "regenerate",
           "verify"]

FORMAT = 1
"""Version of the file layout described in the module docstring."""

GENERATION_TOLERANCE = 1e-12
"""Largest difference between the reference and the explicit definition at generation,
relative to each sequence's row scale (spec 7.1; the layer's of ZS-LAYER-REFERENCE)."""

KINDS = ("attention", "layer")
"""The ``kind`` of a manifest entry: a packed attention call or a packed layer call."""
GATE_RANGE = (-1.0, 2.0)
"""Gates of the "scalar" and "random" kinds are drawn uniformly from this interval."""

EDGES = (0, 1, 15, 16, 17, 0, 63, 64, 65, 0)
"""Empty sequences at the start, middle and end, and lengths around chunks of 16 and 64."""
MANY_SHORT = (3, 0, 1, 5, 2, 6, 0, 4, 1, 1, 90, 2, 0, 3, 6, 1, 5, 0, 2, 4, 1)
"""Twenty short sequences (0 to 6 tokens) beside one long one."""


def offsets_of(lengths: tuple[int, ...]) -> np.ndarray:
    """cu_seqlens of sequences of these lengths: ``[0, l_0, l_0 + l_1, ...]`` (int64)."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


@dataclass(frozen=True)
class PackedSpec:
    """One packed attention case.

    logits: "explicit" (standard normal times `logit_scale`) or "default" (``logits=None``);
    gates: "default" (1, 1, 0), "scalar" (three numbers from `GATE_RANGE`) or "random"
    (per-step (*B, T) arrays from `GATE_RANGE`); shift: (sequence j, amount) adds `amount` to
    the explicit logits of sequence j alone.
    """

    name: str
    seed: int
    batch: tuple[int, ...]
    lengths: tuple[int, ...]
    d: int
    dv: int
    causal: bool
    logits: str = "explicit"
    gates: str = "random"
    logit_scale: float = 1.0
    shift: tuple[int, float] | None = None
    description: str = ""
    kind: str = field(default="attention", init=False)

    @property
    def file(self) -> str:
        return f"{self.name}.npz"

    def entry(self) -> dict[str, Any]:
        """The manifest's description of the case (without name, file and hash)."""
        return {"kind": self.kind, "causal": self.causal, "logits": self.logits,
                "gates": self.gates, "lengths": list(self.lengths),
                "shape": {"batch": list(self.batch), "T": sum(self.lengths), "D": self.d,
                          "Dv": self.dv},
                "logit_scale": self.logit_scale,
                "shifted_sequence": None if self.shift is None else list(self.shift),
                "description": self.description}


@dataclass(frozen=True)
class PackedLayerSpec:
    """One packed layer case: a seed, the lengths, the options and `logit_scale` of the
    radial projection (as `golden_layer.LayerSpec`)."""

    name: str
    seed: int
    batch: tuple[int, ...]
    lengths: tuple[int, ...]
    dm: int
    heads: int
    causal: bool
    first_layer: bool = False
    rope: str = "half"
    norm: bool = True
    logit_scale: float = 1.0
    description: str = ""
    kind: str = field(default="layer", init=False)

    @property
    def file(self) -> str:
        return f"{self.name}.npz"

    def options(self) -> dict[str, Any]:
        return {"heads": self.heads, "causal": self.causal, "first_layer": self.first_layer,
                "rope": self.rope, "norm": self.norm}

    def entry(self) -> dict[str, Any]:
        """The manifest's description of the case (without name, file and hash)."""
        return {"kind": self.kind, **self.options(), "lengths": list(self.lengths),
                "shape": {"batch": list(self.batch), "T": sum(self.lengths), "Dm": self.dm},
                "logit_scale": self.logit_scale, "description": self.description}


CASES: tuple[PackedSpec | PackedLayerSpec, ...] = (
    PackedSpec("causal_edges_explicit", 301, (2,), EDGES, 8, 4, True, logit_scale=3.0,
               description="empty first, middle and last; 1, 15-17, 63-65 tokens"),
    PackedSpec("bidir_edges_default", 302, (), EDGES, 8, 4, False, logits="default",
               description="the edge lengths, default logits, bidirectional"),
    PackedSpec("causal_edges_default_scalar_gates", 303, (), EDGES, 6, 5, True,
               logits="default", gates="scalar",
               description="the edge lengths, default logits, scalar gates"),
    PackedSpec("causal_many_short_default", 304, (2,), MANY_SHORT, 8, 4, True,
               logits="default", description="20 short sequences beside one of 90 tokens"),
    PackedSpec("bidir_many_short_explicit", 305, (), MANY_SHORT, 8, 4, False, logit_scale=3.0,
               description="20 short sequences beside one of 90, bidirectional"),
    PackedSpec("causal_leading_2x3", 306, (2, 3), (0, 4, 17, 0, 1, 9), 8, 4, True,
               description="leading axes (2, 3), explicit logits"),
    PackedSpec("bidir_leading_2x3_default", 307, (2, 3), (0, 9, 16, 0, 2, 0), 8, 4, False,
               logits="default", gates="scalar",
               description="leading axes (2, 3), default logits, scalar gates, bidirectional"),
    PackedSpec("causal_default_gates_ones", 308, (), (1, 1, 0, 1, 16, 1), 8, 8, True,
               gates="default", description="one-token sequences, default gates"),
    PackedSpec("causal_middle_up_1e4", 309, (2,), (20, 33, 20), 8, 4, True, logit_scale=3.0,
               shift=(1, 1e4), description="the middle sequence's logits 1e4 above the others"),
    PackedSpec("bidir_middle_down_1e4", 310, (), (17, 24, 16), 8, 4, False, logit_scale=3.0,
               shift=(1, -1e4),
               description="the middle sequence's logits 1e4 below the others, bidirectional"),
    PackedLayerSpec("layer_causal_packed", 311, (2,), (0, 1, 7, 0, 17, 9, 0), 8, 2, True,
                    first_layer=True, description="causal, first layer, half RoPE, norm"),
    PackedLayerSpec("layer_bidir_packed", 312, (), (5, 0, 12, 1, 8), 8, 2, False,
                    rope="interleaved", norm=False, logit_scale=3.0,
                    description="bidirectional, interleaved RoPE, no norm"),
    PackedLayerSpec("layer_causal_packed_wide", 313, (), (3, 20, 0, 2), 12, 3, True,
                    logit_scale=10.0, description="causal, 3 heads, logits spanning hundreds"),
)
"""Every case, in manifest order."""


@dataclass(frozen=True)
class PackedCase:
    """One loaded packed attention case: ``f(**inputs, causal=causal, cu_seqlens=cu_seqlens)``
    gave `expected` (inputs as in `golden.GoldenCase`)."""

    name: str
    description: str
    causal: bool
    inputs: dict[str, Any] = field(repr=False)
    cu_seqlens: np.ndarray
    expected: np.ndarray = field(repr=False)
    kind: str = field(default="attention", init=False)

    def spans(self) -> list[tuple[int, int]]:
        """(first token, end) of every sequence."""
        return list(pairwise(int(o) for o in self.cu_seqlens))

    def sequence(self, a: int, b: int) -> dict[str, Any]:
        """The inputs of the tokens a .. b-1 alone."""
        return {name: value if isinstance(value, float) else
                value[..., a:b, :] if name in ("q", "k", "v") else value[..., a:b]
                for name, value in self.inputs.items()}

    def output_scale(self) -> np.ndarray:
        """Output scale of every row (spec 7.1), (*B, T), each sequence's taken alone, with
        the reference's default logits where the case has none."""
        scales = []
        for a, b in self.spans():
            one = self.sequence(a, b)
            s = one.get("logits")
            if s is None:
                s = zeros_ref.deviation_logits(one["k"], causal=self.causal)
            gates = [np.asarray(one[g]) for g in ("first", "higher", "zero")]
            scales.append(np.broadcast_to(
                output_scale(one["v"], s, *gates, causal=self.causal),
                (*self.expected.shape[:-2], b - a)))
        return np.concatenate(scales, axis=-1)


@dataclass(frozen=True)
class PackedLayerCase:
    """One loaded packed layer case: ``zeros_ref.layer(x, params, **options,
    cu_seqlens=cu_seqlens)`` gave `expected`."""

    name: str
    description: str
    x: np.ndarray = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    options: dict[str, Any]
    cu_seqlens: np.ndarray
    expected: np.ndarray = field(repr=False)
    kind: str = field(default="layer", init=False)


# --- Generation -------------------------------------------------------------------------------


def _draw_attention(spec: PackedSpec) -> dict[str, np.ndarray]:
    """The stored inputs of an attention case, drawn in a fixed order from its seed."""
    rng = np.random.default_rng(spec.seed)
    t = sum(spec.lengths)
    arrays = {"q": rng.normal(size=(*spec.batch, t, spec.d)),  # (*B, T, D)
              "k": rng.normal(size=(*spec.batch, t, spec.d)),  # (*B, T, D)
              "v": rng.normal(size=(*spec.batch, t, spec.dv))}  # (*B, T, Dv)
    if spec.logits == "explicit":
        logits = rng.normal(size=(*spec.batch, t)) * spec.logit_scale  # (*B, T)
        if spec.shift is not None:
            j, amount = spec.shift
            offsets = offsets_of(spec.lengths)
            logits[..., offsets[j]:offsets[j + 1]] += amount
        arrays["logits"] = logits
    if spec.gates == "default":
        gates = [np.asarray(1.0), np.asarray(1.0), np.asarray(0.0)]
    elif spec.gates == "scalar":
        gates = [np.asarray(g) for g in rng.uniform(*GATE_RANGE, size=3)]
    else:
        gates = list(rng.uniform(*GATE_RANGE, size=(3, *spec.batch, t)))  # 3 x (*B, T)
    arrays.update(zip(("first", "higher", "zero"), gates, strict=True))
    return arrays


def _call_args(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Stored attention inputs as call arguments: 0-d gates become Python floats."""
    return {key: float(arrays[key]) if arrays[key].ndim == 0 else arrays[key]
            for key in ("q", "k", "v", "logits", "first", "higher", "zero") if key in arrays}


def _generate_attention(spec: PackedSpec) -> dict[str, np.ndarray]:
    arrays = _draw_attention(spec)
    args, cu_seqlens = _call_args(arrays), offsets_of(spec.lengths)
    out = zeros_ref.attention(**args, causal=spec.causal, cu_seqlens=cu_seqlens)
    explicit = zeros_ref.explicit_attention(**args, causal=spec.causal, cu_seqlens=cu_seqlens)
    case = PackedCase(spec.name, spec.description, spec.causal, args, cu_seqlens, out)
    _cross_check(spec.name, out, explicit, case.output_scale())
    return {**arrays, "causal": np.asarray(spec.causal), "cu_seqlens": cu_seqlens, "out": out}


def _explicit_core(q: Any, k: Any, v: Any, *, state: Any, return_state: bool,
                   **options: Any) -> Any:
    """The layer's core by the explicit definition (no streaming)."""
    return zeros_ref.explicit_attention(q, k, v, **options)


def _generate_layer(spec: PackedLayerSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    x = rng.normal(size=(*spec.batch, sum(spec.lengths), spec.dm))  # (*B, T, Dm)
    params = zeros_ref.random_layer_params(spec.dm, spec.heads, seed=spec.seed + 1000,
                                           logit_scale=spec.logit_scale)
    cu_seqlens = offsets_of(spec.lengths)
    out = zeros_ref.layer(x, params, **spec.options(), cu_seqlens=cu_seqlens)
    explicit = zeros_ref.layer(x, params, **spec.options(), cu_seqlens=cu_seqlens,
                               attention=_explicit_core)
    _cross_check(spec.name, out, explicit, np.max(np.abs(explicit), axis=-1))
    return {"x": x, **{f"param_{k}": v for k, v in params.items()},
            "heads": np.asarray(spec.heads), "causal": np.asarray(spec.causal),
            "first_layer": np.asarray(spec.first_layer), "norm": np.asarray(spec.norm),
            "rope": np.asarray(spec.rope), "cu_seqlens": cu_seqlens, "out": out}


def _cross_check(name: str, out: np.ndarray, explicit: np.ndarray, scale: np.ndarray) -> None:
    """Raise `RuntimeError` unless `out` is finite and within `GENERATION_TOLERANCE` of the
    explicit definition, relative to `scale`."""
    if not np.all(np.isfinite(out)):
        raise RuntimeError(f"packed golden case {name!r}: the reference output is not finite")
    result = compare(out, explicit, scale, GENERATION_TOLERANCE)
    if not result.passed:
        raise RuntimeError(f"packed golden case {name!r}: the reference and the explicit "
                           f"definition disagree: {result.describe()}")


def generate(spec: PackedSpec | PackedLayerSpec) -> dict[str, np.ndarray]:
    """The arrays stored for one case, in storage order.

    Raises
    ------
    RuntimeError
        If the reference and the explicit definition on each sequence differ by more than
        `GENERATION_TOLERANCE`, or the output is not finite.
    """
    if isinstance(spec, PackedSpec):
        return _generate_attention(spec)
    return _generate_layer(spec)


# --- The directory ----------------------------------------------------------------------------


def default_directory() -> Path:
    """The packed golden directory shipped in the package: ``zeros_conformance/golden_varlen/``."""
    return Path(__file__).resolve().parent / "golden_varlen"


def _root(directory: str | Path | None) -> Path:
    return Path(directory) if directory is not None else default_directory()


def regenerate(directory: str | Path | None = None) -> None:
    """Write every case and the manifest into `directory` (created if needed); stale
    ``.npz`` files of cases no longer in `CASES` are removed."""
    root = _root(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries = [{"name": spec.name, "file": spec.file,
                "sha256": _store.write_arrays(root / spec.file, generate(spec)), **spec.entry()}
               for spec in CASES]
    _store.remove_unlisted(root, {spec.file for spec in CASES})
    _store.write_manifest(root, {"format": FORMAT, "spec_version": zeros_ref.SPEC_VERSION,
                                 "cases": entries})


def verify(directory: str | Path | None = None) -> list[str]:
    """Problems of the directory against its manifest, each naming the file; [] if intact."""
    return _store.problems(_root(directory), format=FORMAT)


def _loaded(entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> PackedCase | PackedLayerCase:
    cu_seqlens = arrays["cu_seqlens"].astype(np.int64)
    if entry.get("kind") == "layer":
        options = {"heads": int(arrays["heads"]), "causal": bool(arrays["causal"]),
                   "first_layer": bool(arrays["first_layer"]), "norm": bool(arrays["norm"]),
                   "rope": None if str(arrays["rope"]) == "none" else str(arrays["rope"])}
        params = {name: arrays[f"param_{name}"] for name in zeros_ref.PARAMETERS}
        return PackedLayerCase(entry["name"], entry.get("description", ""), arrays["x"],
                               params, options, cu_seqlens, arrays["out"])
    return PackedCase(entry["name"], entry.get("description", ""), bool(arrays["causal"]),
                      _call_args(arrays), cu_seqlens, arrays["out"])


def load(directory: str | Path | None = None) -> list[PackedCase | PackedLayerCase]:
    """Every case, in manifest order, after verifying the hashes.

    Raises
    ------
    IntegrityError
        If any file is edited, missing or unlisted; the message names it.
    """
    root = _root(directory)
    problems = verify(root)
    manifest, unreadable = _store.read_manifest(root, format=FORMAT)
    if problems or manifest is None:
        raise IntegrityError("packed golden set fails verification: "
                                    + "; ".join(problems or unreadable))
    return [_loaded(entry, _store.read_arrays(root / entry["file"]))
            for entry in manifest["cases"]]


def attention_cases(directory: str | Path | None = None) -> list[PackedCase]:
    """The packed attention cases of `load`, in manifest order."""
    return [case for case in load(directory) if isinstance(case, PackedCase)]


def layer_cases(directory: str | Path | None = None) -> list[PackedLayerCase]:
    """The packed layer cases of `load`, in manifest order."""
    return [case for case in load(directory) if isinstance(case, PackedLayerCase)]
