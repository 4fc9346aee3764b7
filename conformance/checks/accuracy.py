"""Checks of spec section 7: agreement with the reference and the golden files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import golden
from .._harness import Context, Measurement, agreement, check, random_inputs


def _drawn_cases(ctx: Context) -> list[dict]:
    """Cases drawn from the awkward shapes of the spec by the run's seed alone, so that a seed
    gives the same cases on every machine, whatever else is installed or on disk."""
    rng = ctx.rng("drawn cases")

    def pick(options: tuple | list) -> Any:
        return options[int(rng.integers(len(options)))]

    cases = []
    for _ in range(10 if ctx.quick else 150):
        n = pick([1, 2, 63, 65, 1000]) if rng.uniform() < 0.5 else int(rng.integers(1, 131))
        cases.append({
            "n": n, "d": pick([1, 3, 60, 64, 100]), "dv": pick([1, 3, 60, 64, 100]),
            "batch": pick([(), (2,), (2, 3)]), "causal": pick(ctx.modes()),
            "logits": pick(ctx.logit_kinds()), "gates": pick(["random", "scalar", "default"]),
            "seed": int(rng.integers(2**32)),
        })
    return cases


@check("ZS-ACC-REFERENCE")
def agrees_with_reference(ctx: Context) -> Iterator[Measurement]:
    """Drawn cases in every claimed dtype against the float64 reference."""
    for case in _drawn_cases(ctx):
        batch, n = case["batch"], case["n"]
        if n >= 500 and len(batch) > 1:
            batch = batch[:1]  # keep the long cases affordable
        rng = np.random.default_rng(case["seed"])
        inputs = random_inputs(rng, batch, n, case["d"], case["dv"], logits=case["logits"],
                               gates=case["gates"])
        for dtype in ctx.dtypes:
            yield agreement(ctx, inputs, dtype, causal=case["causal"], seed=case["seed"])
    # Past 2048 tokens with the default logits, whose prefix means run over the whole length.
    rng = ctx.rng("long default logits")
    n = 2_500 if ctx.quick else 4_099
    for logits in ctx.logit_kinds():
        inputs = random_inputs(rng, (2,), n, 16, 16, logits=logits)
        for dtype in ctx.dtypes:
            for causal in ctx.modes():
                yield agreement(ctx, inputs, dtype, causal=causal, long=True)


@check("ZS-ACC-GOLDEN")
def agrees_with_golden_files(ctx: Context) -> Iterator[Measurement]:
    """Golden cases: stored float64 outputs in float64, otherwise the reference on the
    golden inputs rounded to the most precise claimed dtype."""
    dtype = ctx.precise_dtype()
    for case in golden.load():
        inputs = {"logits": None, **case.inputs}
        if not case.causal and not ctx.claims("bidirectional"):
            continue
        if inputs["logits"] is None and not ctx.claims("default_logits"):
            continue
        stored = (lambda seen, out=case.expected: out) if dtype == "float64" else None
        yield agreement(ctx, inputs, dtype, causal=case.causal, expected=stored,
                        golden=case.name)
