"""Checks of spec section 7: agreement with the reference and the golden files."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import golden
from .._harness import Context, Measurement, agreement, check, random_inputs


def _drawn_cases(ctx: Context) -> list[dict]:
    """Cases drawn by hypothesis from the awkward shapes of the spec, fixed by the seed."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as fix_seed
        from hypothesis import strategies as st
    except ImportError:
        raise RuntimeError("drawing cases needs hypothesis: pip install "
                           "'zeros-attention-spec[conformance]'") from None

    drawn: list[dict] = []
    examples = 10 if ctx.quick else 150

    @fix_seed(ctx.seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(
        n=st.sampled_from([1, 2, 63, 65, 1000]) | st.integers(1, 130),
        d=st.sampled_from([1, 3, 60, 64, 100]),
        dv=st.sampled_from([1, 3, 60, 64, 100]),
        batch=st.sampled_from([(), (2,), (2, 3)]),
        causal=st.sampled_from(ctx.modes()),
        logits=st.sampled_from(ctx.logit_kinds()),
        gates=st.sampled_from(["random", "scalar", "default"]),
        seed=st.integers(0, 2**32 - 1),
    )
    def draw(**case: object) -> None:
        drawn.append(case)

    draw()
    return drawn


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
