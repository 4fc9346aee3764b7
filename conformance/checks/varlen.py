"""Checks of spec section 5.2: packed variable-length batches (feature "varlen").

A packed call's expected answer is the float64 reference called on each sequence's slice
alone (never the reference's own packed path), and its error is measured against the output
scale of each sequence alone (spec 7.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import numpy as np

from .. import golden_varlen
from .._harness import (
    GATE_NAMES,
    Context,
    Measurement,
    NotApplicable,
    agreement,
    as_numpy,
    check,
    describe,
    raises,
    random_inputs,
    reference,
    scale_of,
    tokens,
)
from .complexity import best_times

EDGES = [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 0, 200, 1]
"""Sequence lengths around the chunk lengths of common kernels (16 to 128), with empty ones."""
ON_VARLEN_LIMIT = 6.0
"""Time of T tokens packed as one long and many short sequences against one of T tokens."""


def offsets_of(lengths: list[int]) -> np.ndarray:
    """cu_seqlens of sequences of these lengths: ``[0, l_0, l_0 + l_1, ...]`` (int64)."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def separately(inputs: dict[str, Any], offsets: np.ndarray, *,
               causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """The float64 reference of every sequence called alone, and each sequence's own output
    scale, concatenated along the time axis: (*B, T, Dv) and (*B, T)."""
    outs, scales = [], []
    for a, b in pairwise(int(o) for o in offsets):
        one = tokens(inputs, a, b)
        outs.append(reference(one, causal=causal))
        scales.append(scale_of(one, causal=causal))
    return np.concatenate(outs, axis=-2), np.concatenate(scales, axis=-1)


def _backend_args(ctx: Context, inputs: dict[str, Any], dtype: str) -> dict[str, Any]:
    b = ctx.backend
    return {name: b.from_numpy(value, dtype) if isinstance(value, np.ndarray) else value
            for name, value in inputs.items()}


def run_packed(ctx: Context, inputs: dict[str, Any], offsets: np.ndarray, dtype: str,
               **options: Any) -> Any:
    """The backend's packed call on `inputs` in `dtype`; `cu_seqlens` as its int64 array."""
    args = _backend_args(ctx, inputs, dtype)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    cu_seqlens = ctx.backend.from_numpy(offsets, "int64")
    return ctx.attention(q, k, v, **args, cu_seqlens=cu_seqlens, **options)


def packed_agreement(ctx: Context, inputs: dict[str, Any], offsets: np.ndarray, dtype: str, *,
                     causal: bool, rows: np.ndarray | None = None,
                     stored: np.ndarray | None = None, **record: Any) -> Measurement:
    """One packed call against the sequences' separate reference calls, or against the
    `stored` float64 output of a golden case (`rows`: the time steps compared, all by
    default)."""
    keep = slice(None) if rows is None else rows

    def run() -> np.ndarray:
        return as_numpy(ctx, run_packed(ctx, inputs, offsets, dtype, causal=causal))[
            ..., keep, :]

    def expected(seen: dict[str, Any]) -> np.ndarray:
        want = separately(seen, offsets, causal=causal)[0] if stored is None else stored
        return want[..., keep, :]

    def scale(seen: dict[str, Any], _: np.ndarray) -> np.ndarray:
        return separately(seen, offsets, causal=causal)[1][..., keep]

    return agreement(ctx, inputs, dtype, causal=causal, run=run, expected=expected,
                     scale=scale, sequences=len(offsets) - 1, **record)


def _many_short(rng: np.random.Generator, count: int, long: int) -> list[int]:
    short = [int(x) for x in rng.integers(0, 7, size=count)]
    return [*short[: count // 2], long, *short[count // 2:]]


@check("ZS-VARLEN-EQUAL")
def packed_equals_separate(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("varlen-equal")
    layouts = {"edges": EDGES, "many short beside one long":
               _many_short(rng, 30 if ctx.quick else 120, 300 if ctx.quick else 700),
               "one sequence": [97], "one token": [1]}
    for label, lengths in layouts.items():
        offsets = offsets_of(lengths)
        for logits in ctx.logit_kinds():
            inputs = random_inputs(rng, (2,), int(offsets[-1]), 6, 5, logits=logits)
            for dtype in ctx.dtypes:
                for causal in ctx.modes():
                    yield packed_agreement(ctx, inputs, offsets, dtype, causal=causal,
                                           layout=label)
    yield from _golden_cases(ctx)


def _golden_cases(ctx: Context) -> Iterator[Measurement]:
    """The packed golden attention cases: the stored float64 outputs in float64, otherwise
    the reference on the golden inputs rounded to the most precise claimed dtype (as
    ZS-ACC-GOLDEN)."""
    dtype = ctx.precise_dtype()
    for case in golden_varlen.attention_cases():
        inputs = {"logits": None, **case.inputs}
        if not case.causal and not ctx.claims("bidirectional"):
            continue
        if inputs["logits"] is None and not ctx.claims("default_logits"):
            continue
        yield packed_agreement(ctx, inputs, case.cu_seqlens, dtype, causal=case.causal,
                               stored=case.expected if dtype == "float64" else None,
                               golden=case.name)


@check("ZS-VARLEN-ISOLATION")
def nothing_crosses_a_boundary(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("varlen-isolation")
    lengths = [40, 70, 33]
    offsets = offsets_of(lengths)
    inside = np.arange(offsets[1], offsets[2])
    outside = np.setdiff1d(np.arange(offsets[-1]), inside)
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for name in ("q", "k", "v", "logits", *GATE_NAMES):
                inputs = random_inputs(rng, (2,), int(offsets[-1]), 6, 5)
                where = (..., int(rng.choice(inside)))
                if name in ("q", "k", "v"):
                    where = (*where, slice(None))
                inputs[name][where] = np.nan
                yield packed_agreement(ctx, inputs, offsets, dtype, causal=causal,
                                       rows=outside, non_finite=name)
            for offset in (1e4, -1e4):
                inputs = random_inputs(rng, (2,), int(offsets[-1]), 6, 5)
                inputs["logits"][..., inside] += offset
                yield packed_agreement(ctx, inputs, offsets, dtype, causal=causal,
                                       middle_logits_moved_by=offset)


@check("ZS-VARLEN-STATE")
def packed_calls_continue(ctx: Context) -> Iterator[Measurement]:
    """A packed prefill, then a packed call of decode steps, prefills and empty pieces from the
    returned states, against one reference call on each whole sequence."""
    if not ctx.claims("state"):
        raise NotApplicable('continuing from states needs the feature "state"')
    rng = ctx.rng("varlen-state")
    first, then = [5, 0, 70, 1, 33, 64, 0], [1, 1, 0, 40, 1, 7, 3]
    cut_a, cut_b = offsets_of(first), offsets_of(then)
    for logits in ctx.logit_kinds():
        whole = [random_inputs(rng, (2,), a + b, 6, 5, logits=logits) for a, b in zip(first, then)]
        parts = _joined([tokens(w, 0, a) for w, a in zip(whole, first)])
        rest = _joined([tokens(w, a, a + b) for w, a, b in zip(whole, first, then)])
        for dtype in ctx.dtypes:

            def run(dtype: str = dtype, parts: dict = parts, rest: dict = rest) -> np.ndarray:
                _, states = run_packed(ctx, parts, cut_a, dtype, return_state=True)
                return as_numpy(ctx, run_packed(ctx, rest, cut_b, dtype, state=states))

            yield agreement(
                ctx, {str(j): w for j, w in enumerate(whole)}, dtype, run=run,
                expected=lambda seen: _continued(seen, first, _reference),
                scale=lambda seen, _: _continued(seen, first, _scale)[..., 0],
                case=describe(whole[0], dtype=dtype, first=first, then=then))


def _reference(inputs: dict[str, Any]) -> np.ndarray:
    return reference(inputs, causal=True)


def _scale(inputs: dict[str, Any]) -> np.ndarray:
    return scale_of(inputs, causal=True)[..., None]


def _continued(seen: dict[str, Any], first: list[int], of: Any) -> np.ndarray:
    """`of(inputs)` of every whole sequence from the end of its first part on, concatenated
    (sequence j's inputs are ``seen[str(j)]``)."""
    return np.concatenate([of(seen[str(j)])[..., a:, :] for j, a in enumerate(first)], axis=-2)


def _joined(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """Sequences' inputs packed along the time axis (gates as arrays)."""
    joined = {}
    for name in pieces[0]:
        values = [p[name] for p in pieces]
        axis = -2 if name in ("q", "k", "v") else -1
        joined[name] = None if values[0] is None else np.concatenate(values, axis=axis)
    return joined


@check("ZS-ERR-VARLEN")
def bad_offsets_are_named(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("varlen-errors")
    b, dtype = ctx.backend, ctx.precise_dtype()
    x = random_inputs(rng, (2,), 10, 4, 3)
    q, k, v, s = (b.from_numpy(x[n], dtype) for n in ("q", "k", "v", "logits"))
    bad = {
        "floating offsets": (b.from_numpy(np.array([0.0, 4.0, 10.0]), dtype), (TypeError,)),
        "2-D offsets": (b.from_numpy(np.array([[0, 4, 10]]), "int64"), (ValueError,)),
        "not starting at 0": (b.from_numpy(np.array([1, 4, 10]), "int64"), (ValueError,)),
        "decreasing": (b.from_numpy(np.array([0, 6, 4, 10]), "int64"), (ValueError,)),
        "not ending at T": (b.from_numpy(np.array([0, 4, 9]), "int64"), (ValueError,)),
    }
    for label, (offsets, kinds) in bad.items():
        yield raises(lambda o=offsets: ctx.attention(q, k, v, logits=s, cu_seqlens=o), kinds,
                     "cu_seqlens", {"cu_seqlens": label})
    if not ctx.claims("state"):
        return
    three = b.from_numpy(np.array([0, 2, 5, 10]), "int64")
    _, states = ctx.attention(q, k, v, logits=s, cu_seqlens=three, return_state=True)
    _, per_row = ctx.attention(q, k, v, logits=s, return_state=True)
    two = b.from_numpy(np.array([0, 5, 10]), "int64")
    for label, call in (
        ("3 states for 2 sequences", lambda: ctx.attention(q, k, v, logits=s, cu_seqlens=two,
                                                           state=states)),
        ("a per-row state in a packed call",
         lambda: ctx.attention(q, k, v, logits=s, cu_seqlens=two, state=per_row)),
    ):
        yield raises(call, (ValueError,), "state", {"state": label})


@check("ZS-ON-VARLEN", grows=True)
def cost_follows_the_tokens(ctx: Context) -> Iterator[Measurement]:
    dtype = "float32" if "float32" in ctx.dtypes else ctx.precise_dtype()
    t = 4096 if ctx.quick else 16384
    rng = ctx.rng("varlen-cost")
    lengths = [t // 2]
    while sum(lengths) < t:
        lengths.append(min(int(rng.integers(1, 33)), t - sum(lengths)))
    offsets = offsets_of(lengths)
    inputs = random_inputs(rng, (2,), t, 32, 32, gates="scalar")
    b = ctx.backend
    args = _backend_args(ctx, inputs, dtype)
    q, k, v, s = args.pop("q"), args.pop("k"), args.pop("v"), args.pop("logits")
    cu_seqlens = b.from_numpy(offsets, "int64")
    calls = [lambda: b.to_numpy(ctx.attention(q, k, v, logits=s, **args)),
             lambda: b.to_numpy(ctx.attention(q, k, v, logits=s, cu_seqlens=cu_seqlens, **args))]
    dense, packed = best_times(calls, repeats=5)
    case = {"B": [2], "D": 32, "Dv": 32, "T": t, "sequences": len(lengths), "dtype": dtype,
            "seconds": [round(dense, 6), round(packed, 6)]}
    yield Measurement(packed / dense, ON_VARLEN_LIMIT, case,
                      quantity="time(packed)/time(one sequence)")
