"""Checks of spec section 10: the backend protocol."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import numpy as np

from .._harness import Context, Measurement, agreement, as_numpy, check, random_inputs, run_backend
from ..protocol import ATTENTION_KEYWORDS, STATE_KEYWORDS, protocol_problems


@check("ZS-API-PROTOCOL")
def protocol_is_complete(ctx: Context) -> Iterator[Measurement]:
    """Attributes of 10.1, and from_numpy/to_numpy round trips that only round."""
    problems = protocol_problems(ctx.backend)
    yield Measurement(len(problems), 0, {"attributes": "10.1"}, quantity="problems",
                      message="; ".join(problems) or "complete")
    x = ctx.rng("protocol").normal(size=(2, 3))
    for dtype in ctx.dtypes:
        back = as_numpy(ctx, ctx.backend.from_numpy(x, dtype))
        rounding = {"float64": 0.0, "float32": 2**-24, "float16": 2**-11, "bfloat16": 2**-8}
        error = float(np.max(np.abs(back - x) / np.abs(x)))
        yield Measurement(error, rounding[dtype], {"dtype": dtype, "roundtrip": [2, 3]},
                          quantity="relative rounding")


@check("ZS-API-KEYWORDS")
def keyword_names(ctx: Context) -> Iterator[Measurement]:
    """The keyword names of the contract are accepted and the defaults are those of the spec."""
    try:
        parameters = inspect.signature(ctx.backend.attention).parameters
    except (TypeError, ValueError):
        parameters = {}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    names = [name for name in ATTENTION_KEYWORDS
             if ctx.claims("state") or name not in STATE_KEYWORDS]
    missing = [n for n in names if parameters and not accepts_any and n not in parameters]
    yield Measurement(len(missing), 0, {"signature": str(list(parameters))}, quantity="missing",
                      message=f"missing keywords {missing}" if missing else "all present")
    inputs = random_inputs(ctx.rng("keywords"), (2,), 20, 4, 3, gates="default")
    dtype = ctx.precise_dtype()
    explicit = as_numpy(ctx, run_backend(ctx, inputs, dtype, causal=True))
    bare = {"q": inputs["q"], "k": inputs["k"], "v": inputs["v"], "logits": inputs["logits"]}
    defaults = as_numpy(ctx, run_backend(ctx, bare, dtype))
    same = float(np.max(np.abs(defaults - explicit)))
    yield Measurement(same, 0.0, {"dtype": dtype, "defaults": "first=1, higher=1, zero=0, causal"},
                      quantity="difference from explicit defaults",
                      message=f"the call without keywords differs from first=1.0, higher=1.0, "
                              f"zero=0.0, causal=True by up to {same:.3g}")
    yield agreement(ctx, inputs, dtype, causal=True, defaults=True)
