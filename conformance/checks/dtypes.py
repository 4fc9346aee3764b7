"""Checks of spec section 7: output kind and half precision."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._harness import (
    Context,
    Measurement,
    NotApplicable,
    agreement,
    check,
    random_inputs,
)


def _kind(x: object) -> tuple:
    return type(x), getattr(x, "dtype", None), str(getattr(x, "device", "cpu"))


@check("ZS-DTYPE-OUTPUT")
def output_is_of_the_input_kind(ctx: Context) -> Iterator[Measurement]:
    """Library, dtype, device and broadcast shape, with leading axes (2,1) x (1,3) x (3,)."""
    rng = ctx.rng("output-kind")
    b = ctx.backend
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            q = b.from_numpy(rng.normal(size=(2, 1, 9, 4)), dtype)
            k = b.from_numpy(rng.normal(size=(1, 3, 9, 4)), dtype)
            v = b.from_numpy(rng.normal(size=(3, 9, 5)), dtype)
            s = b.from_numpy(rng.normal(size=(9,)), dtype)
            case = {"dtype": dtype, "causal": causal, "q": [2, 1, 9, 4], "k": [1, 3, 9, 4],
                    "v": [3, 9, 5], "logits": [9]}
            try:
                out = ctx.attention(q, k, v, logits=s, causal=causal)
            except Exception as exc:
                yield Measurement(1.0, 0.0, case, quantity="failure", message=repr(exc))
                continue
            problems = []
            if _kind(out) != _kind(q):
                problems.append(f"output {_kind(out)} but input {_kind(q)}")
            if tuple(out.shape) != (2, 3, 9, 5):
                problems.append(f"shape {tuple(out.shape)}, expected (2, 3, 9, 5)")
            yield Measurement(len(problems), 0, case, quantity="problems",
                              message="; ".join(problems) or "ok")


@check("ZS-DTYPE-HALF")
def half_precision(ctx: Context) -> Iterator[Measurement]:
    """Half dtypes within their tolerance, also with logits spanning 1e3 (which includes being
    finite: a non-finite output never agrees) and over 4096 terms of one sign (which a
    half-precision accumulator does not hold)."""
    halves = [d for d in ctx.dtypes if d in ("float16", "bfloat16")]
    if not halves:
        raise NotApplicable("no half-precision dtype claimed")
    rng = ctx.rng("half")
    for dtype in halves:
        for causal in ctx.modes():
            yield agreement(ctx, random_inputs(rng, (2,), 200, 16, 8), dtype, causal=causal)
            wide = random_inputs(rng, (2,), 200, 16, 8)
            wide["logits"] = rng.uniform(-500.0, 500.0, size=(2, 200))
            yield agreement(ctx, wide, dtype, causal=causal, logits_span=1e3)
            yield agreement(ctx, _running_mean(rng, 4096), dtype, causal=causal,
                            terms="same sign")


def _running_mean(rng: np.random.Generator, n: int) -> dict:
    """Sums of n terms of one sign, which a half-precision accumulator rounds visibly: one
    direction for every q and k (cos = 1), equal logits and gates (1, 1, 1), so that
    out_t is the mean of the positive values v_1..v_t."""
    direction = rng.normal(size=8)
    inputs = random_inputs(rng, (), n, 8, 4, gates="default")
    inputs.update(q=np.tile(direction, (n, 1)), k=np.tile(direction, (n, 1)),
                  v=rng.uniform(0.5, 1.5, size=(n, 4)), logits=np.full(n, 0.5), zero=1.0)
    return inputs
