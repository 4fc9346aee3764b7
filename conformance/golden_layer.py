"""The layer golden set (spec section 13, ZS-LAYER-REFERENCE): float64 inputs, parameters and
outputs of `zeros_ref.layer`, in the hashed store (`_store`) of ``golden_layer/``.

Each ``<name>.npz`` holds ``x`` (*B, N, Dm), every parameter as ``param_<name>``, the options
``heads`` (int), ``causal``, ``first_layer``, ``norm`` (bool) and ``rope`` ("half",
"interleaved" or "none"), and the output ``out`` (*B, N, Dm). At generation the output is
cross-checked against the layer with the explicit O(N^2) core; the tests check the stored
outputs against an independent mpmath evaluation of section 13.

Command line: ``zeros-conformance golden verify|regenerate`` covers this set too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import zeros_ref

from . import _store
from ._compare import compare

__all__ = ["CASES", "FORMAT", "LayerCase", "LayerSpec", "default_directory", "load",
           "regenerate", "verify"]

FORMAT = 1
GENERATION_TOLERANCE = 1e-12
"""Largest difference, relative to the largest output, between the chunked and explicit cores."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer case: a seed, shape, options, and `logit_scale` of the radial projection."""

    name: str
    seed: int
    batch: tuple[int, ...]
    n: int
    dm: int
    heads: int
    causal: bool
    first_layer: bool = False
    rope: str | None = "half"
    norm: bool = True
    logit_scale: float = 1.0
    description: str = ""

    @property
    def file(self) -> str:
        return f"{self.name}.npz"

    def options(self) -> dict[str, Any]:
        return {"heads": self.heads, "causal": self.causal, "first_layer": self.first_layer,
                "rope": self.rope, "norm": self.norm}


CASES: tuple[LayerSpec, ...] = (
    LayerSpec("layer_causal", 201, (2,), 17, 8, 2, True,
              description="causal, defaults (half RoPE, norm)"),
    LayerSpec("layer_bidir_first_interleaved", 202, (2,), 17, 8, 2, False, first_layer=True,
              rope="interleaved", description="bidirectional, first layer, interleaved RoPE"),
    LayerSpec("layer_causal_first_no_norm", 203, (), 23, 12, 3, True, first_layer=True,
              rope="interleaved", norm=False,
              description="causal, first layer, interleaved RoPE, no norm, 3 heads"),
    LayerSpec("layer_bidir_no_norm", 204, (), 23, 8, 2, False, norm=False,
              description="bidirectional, half RoPE, no norm"),
    LayerSpec("layer_causal_no_rope_wide", 205, (2,), 17, 8, 2, True, rope=None,
              logit_scale=10.0, description="causal, no RoPE, logits spanning hundreds"),
    LayerSpec("layer_causal_wide_n70", 206, (), 70, 8, 2, True, first_layer=True,
              logit_scale=10.0, description="causal, first layer, wide logits, N past a chunk"),
    LayerSpec("layer_bidir_wide", 207, (), 33, 8, 4, False, rope="interleaved",
              logit_scale=10.0, description="bidirectional, 4 heads of 2, wide logits"),
    LayerSpec("layer_causal_n1", 208, (3,), 1, 8, 2, True, first_layer=True,
              description="N = 1, first layer"),
)
"""Every layer case, in manifest order."""


@dataclass(frozen=True)
class LayerCase:
    """One loaded layer case: ``zeros_ref.layer(x, params, **options)`` gave `expected`."""

    name: str
    description: str
    x: np.ndarray = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    options: dict[str, Any]
    expected: np.ndarray = field(repr=False)


def _explicit_core(q: Any, k: Any, v: Any, *, state: Any, return_state: bool,
                   **options: Any) -> Any:
    return zeros_ref.explicit_attention(q, k, v, **options)


def generate(spec: LayerSpec) -> dict[str, np.ndarray]:
    """The arrays stored for one case; raises `RuntimeError` if the chunked and the explicit
    core disagree beyond `GENERATION_TOLERANCE`."""
    rng = np.random.default_rng(spec.seed)
    x = rng.normal(size=(*spec.batch, spec.n, spec.dm))  # (*B, N, Dm)
    params = zeros_ref.random_layer_params(spec.dm, spec.heads, seed=spec.seed + 1000,
                                           logit_scale=spec.logit_scale)
    out = zeros_ref.layer(x, params, **spec.options())
    explicit = zeros_ref.layer(x, params, **spec.options(), attention=_explicit_core)
    scale = np.max(np.abs(explicit), axis=-1)
    if not np.all(np.isfinite(out)) or not compare(out, explicit, scale,
                                                   GENERATION_TOLERANCE).passed:
        raise RuntimeError(f"layer case {spec.name!r}: the chunked and explicit cores disagree")
    return {"x": x, **{f"param_{k}": v for k, v in params.items()},
            "heads": np.asarray(spec.heads), "causal": np.asarray(spec.causal),
            "first_layer": np.asarray(spec.first_layer), "norm": np.asarray(spec.norm),
            "rope": np.asarray(spec.rope or "none"), "out": out}


def default_directory() -> Path:
    """The layer golden directory shipped in the package: ``zeros_conformance/golden_layer/``."""
    return Path(__file__).resolve().parent / "golden_layer"


def regenerate(directory: str | Path | None = None) -> None:
    """Write every case and the manifest into `directory` (created if needed)."""
    root = Path(directory) if directory is not None else default_directory()
    root.mkdir(parents=True, exist_ok=True)
    entries = [{"name": spec.name, "file": spec.file,
                "sha256": _store.write_arrays(root / spec.file, generate(spec)),
                "shape": {"batch": list(spec.batch), "N": spec.n, "Dm": spec.dm},
                **spec.options(), "logit_scale": spec.logit_scale,
                "description": spec.description} for spec in CASES]
    _store.remove_unlisted(root, {spec.file for spec in CASES})
    _store.write_manifest(root, {"format": FORMAT, "spec_version": zeros_ref.SPEC_VERSION,
                                 "cases": entries})


def verify(directory: str | Path | None = None) -> list[str]:
    """Problems of the directory against its manifest, each naming the file; [] if intact."""
    root = Path(directory) if directory is not None else default_directory()
    return _store.problems(root, format=FORMAT)


def load(directory: str | Path | None = None) -> list[LayerCase]:
    """Every layer case, in manifest order, after verifying the hashes."""
    root = Path(directory) if directory is not None else default_directory()
    problems = verify(root)
    manifest, _ = _store.read_manifest(root, format=FORMAT)
    if problems or manifest is None:
        raise _store.IntegrityError("layer golden set fails verification: "
                                    + "; ".join(problems))
    cases = []
    for entry in manifest["cases"]:
        arrays = _store.read_arrays(root / entry["file"])
        rope = str(arrays["rope"])
        options = {"heads": int(arrays["heads"]), "causal": bool(arrays["causal"]),
                   "first_layer": bool(arrays["first_layer"]), "norm": bool(arrays["norm"]),
                   "rope": None if rope == "none" else rope}
        params = {name: arrays[f"param_{name}"] for name in zeros_ref.PARAMETERS}
        cases.append(LayerCase(entry["name"], entry.get("description", ""), arrays["x"],
                               params, options, arrays["out"]))
    return cases
