"""Checks of spec section 6: numerical stability."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .._harness import (
    GATE_NAMES,
    Context,
    Measurement,
    agreement,
    check,
    random_inputs,
    reference_logits,
    rounded,
    scale_of,
)


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
    for logits in ctx.logit_kinds():
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


RANGES = {
    # dtype: (smallest normal, largest finite, machine epsilon)
    "float16": (2.0**-14, 65504.0, 2.0**-10),
    "bfloat16": (2.0**-126, 3.3895313892515355e38, 2.0**-7),
    "float32": (2.0**-126, 3.4028234663852886e38, 2.0**-23),
    "float64": (2.0**-1022, 1.7976931348623157e308, 2.0**-52),
}
"""What ZS-STAB-MAGNITUDE spans in each dtype: (tiny, max, eps)."""

PATTERNS = ("all", "some", "one")
"""Which rows of an array take a drawn magnitude: every row, a random third, or one row at a
random position (the others keep magnitude about 1)."""

ATTEMPTS = 50
"""Draws allowed per case before the check gives up (a draw is discarded when the bounds of
ZS-STAB-MAGNITUDE leave no room for v)."""


def _scaled(rng: np.random.Generator, x: np.ndarray, decade: float, pattern: str) -> np.ndarray:
    """x with the rows of `pattern` (axis -2 of vectors, -1 of logits) scaled so that their
    largest entry is 10**decade."""
    vectors = x.ndim >= 3
    n = x.shape[-2] if vectors else x.shape[-1]
    rows = {"all": np.ones(n, dtype=bool), "some": rng.uniform(size=n) < 1 / 3,
            "one": np.arange(n) == rng.integers(n)}[pattern]
    peak = np.max(np.abs(x)) if x.size else 1.0
    factor = np.where(rows, 10.0**decade / peak, 1.0)
    return x * (factor[:, None] if vectors else factor)


def magnitude_case(ctx: Context, rng: np.random.Generator, dtype: str, *, causal: bool,
                   logits: str) -> tuple[dict, dict] | None:
    """One case of ZS-STAB-MAGNITUDE in `dtype`, or None when the draw leaves no room.

    q and k rows take norms anywhere in the dtype's normal range (with default logits, only
    as far as the logits stay finite in the compute dtype); explicit logits up to max * eps;
    the largest |v| and |gate| from tiny / eps up to max * eps / (1 + spread of the logits);
    every row's output scale (spec 7.1) in [tiny / eps, max * eps].
    """
    tiny, big, eps = RANGES[dtype]
    low, high = math.log10(tiny / eps), math.log10(big * eps)
    n, d, dv = int(rng.integers(1, 97)), int(rng.integers(1, 9)), int(rng.integers(1, 6))
    inputs = random_inputs(rng, (2,), n, d, dv, logits=logits)
    top_k = math.log10(big) - 1
    if logits == "default":  # |s| <= |k|^2 / sqrt(D), computed in float32 at least
        top_k = min(top_k, (math.log10(RANGES["float32"][1]) - 1) / 2 - math.log10(d))
    record = {}
    for name, top in (("q", math.log10(big) - 1), ("k", top_k)):
        pattern, decade = str(rng.choice(PATTERNS)), rng.uniform(math.log10(tiny) + 1, top)
        inputs[name] = _scaled(rng, inputs[name], decade, pattern)
        record[name] = f"{pattern} rows at 1e{decade:.0f}"
    if logits == "explicit":
        pattern, decade = str(rng.choice(PATTERNS)), rng.uniform(-3.0, high)
        inputs["logits"] = _scaled(rng, inputs["logits"], decade, pattern)
        record["logits"] = f"{pattern} at 1e{decade:.0f}"
    s = reference_logits(rounded(ctx, inputs, dtype), causal=causal)
    spread = 1.0 + (float(np.ptp(s)) if s.size else 0.0)
    if not (np.all(np.abs(s) <= big * eps) and math.log10(2 * spread) < high - low):
        return None
    decade = rng.uniform(low, high - math.log10(2 * spread))  # gates: [-1, 2] * 10**decade
    for g in GATE_NAMES:
        inputs[g] = inputs[g] * 10.0**decade
    inputs["zero"][..., rng.uniform(size=n) < 0.2] = 0.0
    record["gates"] = f"1e{decade:.0f}"
    pattern, relative = str(rng.choice(PATTERNS)), rng.uniform(low / 2, high / 2)
    v = _scaled(rng, inputs["v"], relative, pattern)
    v /= np.max(np.abs(v))  # largest entry 1; its decade is drawn last
    scale = scale_of(dict(rounded(ctx, inputs, dtype), v=v), causal=causal)
    scale = scale[scale > 0]
    if scale.size == 0:
        return None
    lo = max(low, low - math.log10(float(scale.min())))
    hi = high - max(math.log10(float(scale.max())), math.log10(spread))
    if not lo <= hi:
        return None
    decade = rng.uniform(lo, hi)
    inputs["v"] = v * 10.0**decade
    record["v"] = f"{pattern} rows at 1e{relative:.0f} of the others, largest 1e{decade:.0f}"
    return inputs, record


@check("ZS-STAB-MAGNITUDE")
def inputs_of_any_magnitude(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("magnitude")
    wanted = 6 if ctx.quick else 20
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for logits in ctx.logit_kinds():
                for _ in range(wanted):
                    for _ in range(ATTEMPTS):
                        drawn = magnitude_case(ctx, rng, dtype, causal=causal, logits=logits)
                        if drawn is not None:
                            break
                    else:
                        raise RuntimeError(f"no {dtype} case within the bounds of "
                                           f"ZS-STAB-MAGNITUDE in {ATTEMPTS} draws")
                    inputs, record = drawn
                    yield agreement(ctx, inputs, dtype, causal=causal, magnitudes=record)
