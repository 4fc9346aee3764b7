"""Checks of spec sections 2 and 3: the definition and its defaults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import zeros_ref

from .._compare import TOLERANCE, compare
from .._harness import (
    Context,
    Measurement,
    agreement,
    as_numpy,
    check,
    describe,
    random_inputs,
    run_backend,
    scale_of,
)


def _explicit(causal: bool):
    def expected(seen: dict[str, Any]) -> np.ndarray:
        q, k, v = seen["q"], seen["k"], seen["v"]
        options = {g: seen[g] for g in ("logits", "first", "higher", "zero")}
        return zeros_ref.explicit_attention(q, k, v, causal=causal, **options)

    return expected


@check("ZS-DEF-WEIGHTS")
def weights_match_the_definition(ctx: Context) -> Iterator[Measurement]:
    """Small cases against the explicit O(N^2) definition, every claimed dtype."""
    rng = ctx.rng("weights")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for n in (1, 5, 37, 70):
                inputs = random_inputs(rng, (2,), n, 8, 5)
                yield agreement(ctx, inputs, dtype, causal=causal, expected=_explicit(causal))


def _aligned(rng: np.random.Generator, batch: tuple[int, ...], n: int, d: int, dv: int) -> dict:
    """Inputs whose queries and keys all share one direction, so every cosine is 1."""
    inputs = random_inputs(rng, batch, n, d, dv)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    inputs["q"] = rng.uniform(0.5, 2.0, size=(*batch, n, 1)) * u
    inputs["k"] = rng.uniform(0.5, 2.0, size=(*batch, n, 1)) * u
    return inputs


def _difference(
    a: np.ndarray, b: np.ndarray, scale: np.ndarray, dtype: str, case: dict
) -> Measurement:
    """Two backend outputs that must agree, compared relative to the output scale."""
    result = compare(a, b, scale, 2 * TOLERANCE[dtype])
    return Measurement.of(result, case)


@check("ZS-DEF-COSINE")
def only_directions_matter(ctx: Context) -> Iterator[Measurement]:
    """Positive rescaling of each q_t and k_i changes nothing; zero vectors give cosine 0."""
    rng = ctx.rng("cosine")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            inputs = random_inputs(rng, (2,), 40, 6, 4)
            base = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=causal))
            scaled = dict(inputs)
            scaled["q"] = inputs["q"] * 10.0 ** rng.uniform(-2, 2, size=(2, 40, 1))
            scaled["k"] = inputs["k"] * 10.0 ** rng.uniform(-2, 2, size=(2, 40, 1))
            out = as_numpy(ctx, run_backend(ctx, scaled, dtype, causal=causal))
            case = describe(inputs, dtype=dtype, causal=causal, change="rescaled q and k")
            yield _difference(out, base, scale_of(inputs, causal=causal), dtype, case)
            zeroed = dict(inputs)
            zeroed["q"], zeroed["k"] = inputs["q"].copy(), inputs["k"].copy()
            zeroed["q"][:, ::3] = 0.0
            zeroed["k"][:, 1::4] = 0.0
            yield agreement(ctx, zeroed, dtype, causal=causal, change="zero q and k rows")


@check("ZS-DEF-GATES")
def gates_act_per_step(ctx: Context) -> Iterator[Measurement]:
    """Each gate alone, unequal scalars, and per-step arrays of every broadcastable shape."""
    rng = ctx.rng("gates")
    dtype = ctx.precise_dtype()
    batch, n = (2, 3), 33
    for causal in ctx.modes():
        for alone in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.3, -0.7, 1.9)):
            inputs = random_inputs(rng, batch, n, 5, 4, gates="default")
            inputs.update(zip(("first", "higher", "zero"), alone))
            yield agreement(ctx, inputs, dtype, causal=causal, gates=list(alone))
        for shape in ((n,), (*batch, n), (2, 1, n), (1, 3, 1), (1,)):
            inputs = random_inputs(rng, batch, n, 5, 4)
            for g in ("first", "higher", "zero"):
                inputs[g] = rng.uniform(-1.0, 2.0, size=shape)
            yield agreement(ctx, inputs, dtype, causal=causal, gate_shape=list(shape))


@check("ZS-DEF-ZEROSUM")
def rows_sum_to_zero(ctx: Context) -> Iterator[Measurement]:
    """With cos = 1, adding w to every v_i adds g0_t * w to out_t (nothing when g0 = 0)."""
    rng = ctx.rng("zerosum")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for zero in ("none", "random"):
                inputs = _aligned(rng, (2,), 50, 4, 3)
                if zero == "none":
                    inputs["zero"] = 0.0
                w = rng.normal(size=3) * 4.0
                moved = dict(inputs, v=inputs["v"] + w)
                a = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=causal))
                b = as_numpy(ctx, run_backend(ctx, moved, dtype, causal=causal))
                zero_gate = np.broadcast_to(np.asarray(inputs["zero"]), (2, 50))
                shifted = a + zero_gate[..., None] * w
                scale = np.maximum(scale_of(inputs, causal=causal), scale_of(moved, causal=causal))
                case = describe(inputs, dtype=dtype, causal=causal, added=w.round(3).tolist())
                yield _difference(b, shifted, scale, dtype, case)


@check("ZS-DEF-SOFTMAX")
def softmax_limit(ctx: Context) -> Iterator[Measurement]:
    """Gates (1, 1, 1) with cos = 1 give the softmax-weighted mean of the values."""
    rng = ctx.rng("softmax")

    def softmax_mean(seen: dict[str, Any], causal: bool) -> np.ndarray:
        s, v = seen["logits"], seen["v"]
        n = s.shape[-1]
        out = np.empty_like(v)
        for t in range(n):
            visible = slice(0, t + 1) if causal else slice(0, n)
            e = np.exp(s[..., visible] - s[..., visible].max(axis=-1, keepdims=True))
            out[..., t, :] = np.einsum("...i,...ij->...j", e / e.sum(-1, keepdims=True),
                                       v[..., visible, :])
        return out

    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            inputs = _aligned(rng, (3,), 45, 4, 3)
            inputs.update(first=1.0, higher=1.0, zero=1.0)
            yield agreement(ctx, inputs, dtype, causal=causal,
                            expected=lambda seen, c=causal: softmax_mean(seen, c))


SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def exact_shifts(dtype: str) -> tuple[float, ...]:
    """Shifts of ZS-DEF-SHIFT in `dtype`: 16 and +-1e4, or +-the largest shift that keeps
    logits on a 1/4 grid within +-8 exact when 1e4 does not (504 in float16, 56 in bfloat16)."""
    largest = 2.0 ** (SIGNIFICAND_BITS[dtype] - 2) - 8  # |s + shift| <= 2^(bits - 2)
    far = min(1e4, largest)
    return (16.0, far, -far)


@check("ZS-DEF-SHIFT")
def logit_shift_changes_nothing(ctx: Context) -> Iterator[Measurement]:
    """Adding a constant to every logit leaves the output unchanged (exact shifts)."""
    rng = ctx.rng("shift")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            inputs = random_inputs(rng, (2,), 60, 5, 4)
            # Logits on a 1/4 grid within +-8 hold their shifts exactly (`exact_shifts`), so
            # the inputs differ by the shift only.
            inputs["logits"] = np.round(rng.uniform(-8, 8, size=(2, 60)) * 4) / 4
            base = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=causal))
            for delta in exact_shifts(dtype):
                moved = dict(inputs, logits=inputs["logits"] + delta)
                out = as_numpy(ctx, run_backend(ctx, moved, dtype, causal=causal))
                case = describe(inputs, dtype=dtype, causal=causal, shift=delta)
                yield _difference(out, base, scale_of(inputs, causal=causal), dtype, case)


@check("ZS-DEF-CAUSAL")
def causal_outputs_ignore_the_future(ctx: Context) -> Iterator[Measurement]:
    """Changing every input after position t0 (including huge logits) keeps out[:t0]."""
    rng = ctx.rng("causal")
    for dtype in ctx.dtypes:
        for n, t0 in ((40, 17), (150, 70), (9, 1)):
            inputs = random_inputs(rng, (2,), n, 5, 4)
            future = random_inputs(rng, (2,), n, 5, 4, logit_scale=3.0)
            future["logits"] = future["logits"] + 300.0
            changed = {}
            for name, value in inputs.items():
                axis = -2 if name in ("q", "k", "v") else -1
                keep, new = np.split(value, [t0], axis=axis)[0], future[name]
                changed[name] = np.concatenate([keep, np.split(new, [t0], axis=axis)[1]], axis)
            a = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=True))[..., :t0, :]
            b = as_numpy(ctx, run_backend(ctx, changed, dtype, causal=True))[..., :t0, :]
            scale = scale_of(inputs, causal=True)[..., :t0]
            case = describe(inputs, dtype=dtype, causal=True, changed_from=t0)
            yield _difference(b, a, scale, dtype, case)


@check("ZS-DEF-BIDIRECTIONAL")
def bidirectional_form(ctx: Context) -> Iterator[Measurement]:
    """causal=False against the reference, every claimed dtype."""
    rng = ctx.rng("bidirectional")
    for dtype in ctx.dtypes:
        for n in (1, 7, 64, 130):
            inputs = random_inputs(rng, (2,), n, 6, 5)
            yield agreement(ctx, inputs, dtype, causal=False)


@check("ZS-LOG-DEFAULT")
def default_logits(ctx: Context) -> Iterator[Measurement]:
    """logits=None means the deviation logits of k, in every mode and dtype."""
    rng = ctx.rng("default-logits")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for n in (1, 30, 129):
                inputs = random_inputs(rng, (2,), n, 6, 5, logits="default")
                yield agreement(ctx, inputs, dtype, causal=causal)
