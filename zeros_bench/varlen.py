"""``zeros-bench --varlen``: a packed batch (spec 5.2) against one dense sequence and padding.

For a backend that claims the feature "varlen", T tokens per row, cut into sequences of random
lengths (`configs.Packed`), are timed three ways in one run:

- *packed*: one call with ``cu_seqlens``, the offsets given as
  ``backend.from_numpy(offsets, "int64")``;
- *dense*: the same T tokens as one sequence, the cost a packed call should match
  (ZS-ON-VARLEN), timed in turn with the packed call, round by round (`timed_in_turn`);
- *padded* (with `measure.timed`, after the others): every sequence padded with zeros to the
  longest, one dense call over S*B rows:
  what the batch costs without ``cu_seqlens``. Its rows hold S times the longest length, not
  T, tokens; where its inputs would take more than the batch's memory budget, it is skipped
  with the reason, and its token count is reported all the same.

The result holds the ratios packed/dense and padded/dense of the minimum times. Padding at the
end leaves the causal outputs of the real tokens as they are; bidirectional padding without a
mask changes them, and is timed as a cost only. A backend that does not claim "varlen" gets
the reason and no timings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from itertools import pairwise
from typing import Any

import numpy as np

from zeros_conformance import protocol

from .configs import GIB, Packed
from .measure import timed, timed_in_turn

__all__ = ["measure_varlen", "not_claimed", "padded_bytes", "varlen_lines"]


def not_claimed(backend: Any) -> str | None:
    """Why the backend gets no packed timings, or None when it claims "varlen"."""
    if "varlen" in protocol.features(backend):
        return None
    return (f"backend {protocol.name(backend)!r} does not claim the feature \"varlen\" "
            "(packed sequences with cu_seqlens, spec 5.2)")


def padded_bytes(packed: Packed, lengths: list[int]) -> int:
    """Bytes of the padded call's inputs q, k, v and logits: S*B rows of the longest length."""
    rows = len(lengths) * packed.bh
    itemsize = np.dtype(packed.dtype).itemsize
    return rows * max(lengths) * (2 * packed.d + packed.dv + 1) * itemsize


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Standard normal draws of `dtype`, drawn in float32 or float64 (not float64 first)."""
    drawn = dtype if dtype in ("float32", "float64") else "float32"
    return rng.standard_normal(shape, dtype=drawn).astype(dtype, copy=False)


def _inputs(packed: Packed) -> tuple[np.ndarray, ...]:
    """q, k (bh, T, D), v (bh, T, Dv) and logits (bh, T) of the packed batch."""
    rng = np.random.default_rng(packed.seed + 1)
    rows, t = packed.bh, packed.t
    return (_normal(rng, (rows, t, packed.d), packed.dtype),
            _normal(rng, (rows, t, packed.d), packed.dtype),
            _normal(rng, (rows, t, packed.dv), packed.dtype),
            _normal(rng, (rows, t), packed.dtype))


def _padded(arrays: tuple[np.ndarray, ...], offsets: np.ndarray) -> list[np.ndarray]:
    """The arrays with every sequence padded with zeros to the longest: (S*bh, L, ...)."""
    spans = list(pairwise(int(o) for o in offsets))
    longest = max(b - a for a, b in spans)
    out = []
    for x in arrays:
        rows, tail = x.shape[0], x.shape[2:]
        padded = np.zeros((len(spans), rows, longest, *tail), x.dtype)
        for j, (a, b) in enumerate(spans):
            padded[j, :, : b - a] = x[:, a:b]
        out.append(padded.reshape(len(spans) * rows, longest, *tail))
    return out


def measure_varlen(backend: Any, packed: Packed,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Times of the packed, dense and padded calls of `packed` (see the module), their ratios
    to the dense call, and the sizes; ``{"skipped": reason}`` for a backend without
    "varlen"."""
    reason = not_claimed(backend)
    if reason is not None:
        log(f"  varlen: not measured: {reason}")
        return {"skipped": reason}
    lengths = packed.lengths()
    offsets = np.cumsum([0, *lengths], dtype=np.int64)
    result: dict[str, Any] = {**asdict(packed), "skipped": None, "sequences": len(lengths),
                              "longest": max(lengths), "tokens": packed.t,
                              "padded_tokens": len(lengths) * max(lengths),
                              "padded_bytes": padded_bytes(packed, lengths)}
    mode = "causal" if packed.causal else "bidirectional"
    log(f"  varlen: B*H={packed.bh} T={packed.t} as {len(lengths)} sequences of "
        f"{packed.min_len} to {packed.max_len} tokens, D={packed.d} Dv={packed.dv} "
        f"{packed.dtype} {mode} ...")
    arrays = _inputs(packed)
    q, k, v, s = (backend.from_numpy(x, packed.dtype) for x in arrays)
    cu_seqlens = backend.from_numpy(offsets, "int64")
    sync = protocol.synchronize(backend)

    def call(q: Any, k: Any, v: Any, s: Any, **options: Any) -> Callable[[], Any]:
        def run() -> Any:
            out = backend.attention(q, k, v, logits=s, causal=packed.causal, **options)
            sync()
            return out

        return run

    result.update(timed_in_turn({"packed": call(q, k, v, s, cu_seqlens=cu_seqlens),
                                 "dense": call(q, k, v, s)}, packed.repeats))
    dense = result["dense"]["min"]
    result["packed_vs_dense"] = result["packed"]["min"] / dense
    result["padded"] = result["padded_vs_dense"] = result["padded_skipped"] = None
    if result["padded_bytes"] > packed.budget_bytes:
        result["padded_skipped"] = (
            f"its inputs would take {result['padded_bytes'] / GIB:.1f} GiB, over the budget "
            f"of {packed.budget_bytes / GIB:.1f} GiB")
        return result
    del q, k, v, s
    padded = [backend.from_numpy(x, packed.dtype) for x in _padded(arrays, offsets)]
    result["padded"] = timed(call(*padded), packed.repeats)
    result["padded_vs_dense"] = result["padded"]["min"] / dense
    return result


def varlen_lines(result: dict[str, Any]) -> list[str]:
    """The table lines of a `measure_varlen` result."""
    if result["skipped"] is not None:
        return [f"packed batch (--varlen): not measured: {result['skipped']}"]
    mode = "causal" if result["causal"] else "bidirectional"
    lines = [f"packed batch (--varlen): B*H={result['bh']} T={result['t']} D={result['d']} "
             f"Dv={result['dv']} {result['dtype']} {mode}; {result['sequences']} sequences of "
             f"{result['min_len']} to {result['max_len']} tokens (longest {result['longest']}, "
             f"seed {result['seed']}); times in ms, min over repeats",
             f"{'call':<34} {'tokens/row':>10} {'ms':>9} {'/dense':>7}"]
    rows = (("packed, with cu_seqlens", "packed", result["tokens"], "packed_vs_dense"),
            ("dense, one sequence of T", "dense", result["tokens"], None),
            ("padded to the longest, S*B rows", "padded", result["padded_tokens"],
             "padded_vs_dense"))
    for label, key, tokens, ratio in rows:
        timing = result[key]
        ms = f"{timing['min'] * 1e3:9.2f}" if timing is not None else f"{'-':>9}"
        share = 1.0 if ratio is None else result[ratio]
        times = f"{share:7.2f}" if share is not None else f"{'-':>7}"
        lines.append(f"{label:<34} {tokens:>10} {ms} {times}")
    if result["padded_skipped"] is not None:
        lines.append(f"padded call not timed: {result['padded_skipped']}")
    return lines
