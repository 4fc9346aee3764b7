"""Checks of spec section 9: gradients, against central differences of the definition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import zeros_ref

from .._harness import Context, Measurement, check, describe, random_inputs

STEP = 1e-6
TOLERANCE = 1e-6
ARGUMENTS = ("q", "k", "v", "logits", "first", "higher", "zero")


def _loss(inputs: dict[str, Any], cotangent: np.ndarray, causal: bool) -> float:
    options = {name: inputs[name] for name in ("logits", "first", "higher", "zero")}
    out = zeros_ref.attention(inputs["q"], inputs["k"], inputs["v"], causal=causal, **options)
    return float(np.sum(out * cotangent))


def numerical_gradients(
    inputs: dict[str, Any], cotangent: np.ndarray, causal: bool
) -> dict[str, np.ndarray]:
    """Central differences of ``sum(attention(...) * cotangent)`` for every array input."""
    grads = {}
    for name in ARGUMENTS:
        if not isinstance(inputs.get(name), np.ndarray):
            continue
        grad = np.zeros_like(inputs[name])
        for index in np.ndindex(grad.shape):
            plus = {key: np.copy(value) if key == name else value
                    for key, value in inputs.items()}
            minus = {key: np.copy(value) if key == name else value
                     for key, value in inputs.items()}
            plus[name][index] += STEP
            minus[name][index] -= STEP
            grad[index] = (_loss(plus, cotangent, causal) - _loss(minus, cotangent, causal))
        grads[name] = grad / (2 * STEP)
    return grads


@check("ZS-GRAD")
def gradients_match(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("grad")
    for causal in ctx.modes():
        for logits in ctx.logit_kinds():
            inputs = random_inputs(rng, (2,), 6, 3, 2, logits=logits)
            cotangent = rng.normal(size=(2, 6, 2))
            expected = numerical_gradients(inputs, cotangent, causal)
            options = {name: inputs[name] for name in ("logits", "first", "higher", "zero")}
            got = ctx.backend.gradients(inputs["q"], inputs["k"], inputs["v"], cotangent,
                                        causal=causal, **options)
            for name, want in expected.items():
                case = describe(inputs, causal=causal, argument=name, dtype="float64")
                have = np.asarray(got.get(name, np.full_like(want, np.nan)), dtype=np.float64)
                if have.shape != want.shape:
                    yield Measurement(np.inf, TOLERANCE, case,
                                      message=f"gradient shape {have.shape}, expected {want.shape}")
                    continue
                error = float(np.max(np.abs(have - want)) / max(np.max(np.abs(want)), 1e-300))
                yield Measurement(error if np.isfinite(error) else np.inf, TOLERANCE, case,
                                  quantity="relative gradient error",
                                  message=f"gradient with respect to {name}: {error:.3g} of its "
                                          "largest entry off the central differences")
