"""Checks of spec section 6: numerical stability."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._harness import Context, Measurement, agreement, check, random_inputs


def _wide(rng: np.random.Generator, batch: tuple[int, ...], n: int) -> list[tuple[str, object]]:
    """Logit patterns spanning 1e4: uniform, and a late outlier far above an early cluster
    (the pattern that breaks a global-max stabiliser)."""
    uniform = rng.uniform(-5e3, 5e3, size=(*batch, n))
    outlier = rng.normal(size=(*batch, n)) * 3.0 - 5e3
    outlier[..., n // 2] = 5e3
    return [("uniform in [-5e3, 5e3]", uniform), ("outlier at N/2", outlier)]


@check("ZS-STAB-RANGE")
def logits_spanning_1e4(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("range")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for label, logits in _wide(rng, (2,), 130):
                inputs = dict(random_inputs(rng, (2,), 130, 6, 4), logits=logits)
                yield agreement(ctx, inputs, dtype, causal=causal, logit_pattern=label)


@check("ZS-STAB-OFFSET")
def logits_far_from_zero(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("offset")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for offset in (1e4, -1e4):
                for label, logits in _wide(rng, (2,), 130):
                    inputs = dict(random_inputs(rng, (2,), 130, 6, 4), logits=logits + offset)
                    yield agreement(ctx, inputs, dtype, causal=causal, logit_pattern=label,
                                    offset=offset)
                narrow = dict(random_inputs(rng, (2,), 130, 6, 4))
                narrow["logits"] = narrow["logits"] + offset
                yield agreement(ctx, narrow, dtype, causal=causal, logit_pattern="normal * 3",
                                offset=offset)


@check("ZS-STAB-LONG", grows=True)
def long_sequences(ctx: Context) -> Iterator[Measurement]:
    """float32 (or the most precise claimed dtype below it) over 2^14 or 1e5 tokens."""
    dtype = "float32" if "float32" in ctx.dtypes else ctx.precise_dtype()
    n = 2**14 if ctx.quick else 100_000
    rng = ctx.rng("long")
    for logits in ("explicit", "default") if ctx.claims("default_logits") else ("explicit",):
        inputs = random_inputs(rng, (), n, 16, 16, logits=logits)
        yield agreement(ctx, inputs, dtype, causal=True, long=True)


@check("ZS-STAB-DEGENERATE")
def degenerate_inputs(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("degenerate")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            zero_q = random_inputs(rng, (2,), 20, 4, 3)
            zero_q["q"][...] = 0.0
            zero_k = random_inputs(rng, (2,), 20, 4, 3)
            zero_k["k"][:, ::2] = 0.0
            equal = random_inputs(rng, (2,), 20, 4, 3)
            equal["logits"] = np.full((2, 20), 2.5)
            cases = {
                "all q zero": zero_q,
                "every other k zero": zero_k,
                "equal logits": equal,
                "N = 1": random_inputs(rng, (2,), 1, 4, 3),
                "D = 1": random_inputs(rng, (2,), 20, 1, 3),
                "Dv = 1": random_inputs(rng, (2,), 20, 4, 1),
            }
            for label, inputs in cases.items():
                yield agreement(ctx, inputs, dtype, causal=causal, degenerate=label)
