"""One comparison for every check: scale-relative error against the float64 reference.

Spec section 7 (ZS-ACC-*): the error of an output row is measured against the row's
*output scale*, a bound on ``|out_t|`` that needs O(N) work:

    scale_t = max_{i visible from t} |v_i|_inf
              * (|gh_t| + |g1_t - gh_t| * (max s - min s over visible i) + |g0_t - gh_t|)

It bounds ``sum_i |r[t,i] cos[t,i] v_i|`` (|cos| <= 1, sum p = 1, |f[t,i]| <= range / t,
z = 1/t), the size of the terms whose rounding the error is made of. A row of zero scale
must be exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ROW_ENTRIES", "TOLERANCE", "Comparison", "compare", "output_scale"]

TOLERANCE: dict[str, float] = {
    "float64": 1e-10,
    "float32": 2e-4,
    "float16": 1e-2,
    "bfloat16": 6e-2,
}
"""Largest allowed scale-relative error per input dtype (spec table 7.1)."""
ROW_ENTRIES = 256
"""A failed comparison keeps the error of at most this many runs of output rows (`rows`)."""


def _prefix(x: np.ndarray, op: np.ufunc, causal: bool) -> np.ndarray:
    """Running reduction along the last axis (causal) or its total broadcast back (an empty
    axis stays empty)."""
    if causal or x.shape[-1] == 0:
        return op.accumulate(x, axis=-1)
    return np.broadcast_to(op.reduce(x, axis=-1, keepdims=True), x.shape)


def output_scale(
    v: np.ndarray,
    logits: np.ndarray,
    first: np.ndarray,
    higher: np.ndarray,
    zero: np.ndarray,
    *,
    causal: bool,
) -> np.ndarray:
    """scale_t of every output row, shape (*B, N); inputs as float64 numpy arrays.

    v: (..., N, Dv); logits and the gates broadcastable to (..., N).
    """
    vmax = _prefix(np.max(np.abs(v), axis=-1), np.maximum, causal)  # (..., N)
    spread = _prefix(logits, np.maximum, causal) - _prefix(logits, np.minimum, causal)
    gates = np.abs(higher) + np.abs(first - higher) * spread + np.abs(zero - higher)
    return vmax * gates


@dataclass(frozen=True)
class Comparison:
    """Outcome of one comparison: the worst scale-relative error and where it is."""

    error: float
    tolerance: float
    worst_index: tuple[int, ...]
    problem: str = ""
    rows: tuple[float, ...] = ()
    """Of a failed comparison: the error of each output row t (max over leading axes and Dv;
    inf where the output is not finite and the reference is), where the error starts along
    the sequence. Longer outputs keep the max over each run of `rows_per_entry` rows."""
    rows_per_entry: int = 1

    @property
    def passed(self) -> bool:
        return not self.problem and self.error <= self.tolerance

    def describe(self) -> str:
        if self.problem:
            return self.problem
        return f"error {self.error:.3g} vs tolerance {self.tolerance:.3g} at {self.worst_index}"


def compare(
    out: np.ndarray, ref: np.ndarray, scale: np.ndarray, tolerance: float
) -> Comparison:
    """Compare an output with the reference, row by row, relative to `scale`.

    out, ref: (..., N, Dv); scale: broadcastable to (..., N). Shapes must match exactly and
    the output must be finite wherever the reference is.
    """
    if out.shape != ref.shape:
        return Comparison(np.inf, tolerance, (), f"shape {out.shape}, expected {ref.shape}")
    if out.size == 0:
        return Comparison(0.0, tolerance, ())
    diff = np.abs(out.astype(np.float64) - ref)
    bad = ~np.isfinite(diff) & np.isfinite(ref)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64)[..., None], diff.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(bad, np.inf, np.where(diff == 0, 0.0, diff / s))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        return Comparison(np.inf, tolerance, where, f"non-finite output at {where}",
                          *_rows(rel))
    flat = int(np.argmax(rel))
    worst = tuple(int(i) for i in np.unravel_index(flat, rel.shape))
    error = float(rel.reshape(-1)[flat])
    if error <= tolerance:
        return Comparison(error, tolerance, worst)
    return Comparison(error, tolerance, worst, "", *_rows(rel))


def _rows(rel: np.ndarray) -> tuple[tuple[float, ...], int]:
    """Per-row errors of a (..., N, Dv) array of relative errors, at most `ROW_ENTRIES` of
    them (the max over runs of rows), and the rows per entry."""
    n = rel.shape[-2]
    per_row = np.fmax.reduce(rel.reshape(-1, n, rel.shape[-1]), axis=(0, 2))  # (N,)
    width = -(-n // ROW_ENTRIES)
    padded = np.concatenate([per_row, np.zeros(-n % width)])
    return tuple(float(x) for x in np.fmax.reduce(padded.reshape(-1, width), axis=1)), width
