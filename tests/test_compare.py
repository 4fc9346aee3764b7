"""The suite's public measure of error: `output_scale` (spec 7.1) and `compare`."""

from __future__ import annotations

import numpy as np
import pytest

from zeros_conformance import TOLERANCE, compare, output_scale


def _scale_by_loops(v, s, g1, gh, g0, causal):
    """scale_t of spec 7.1 written with plain loops over the visible keys P(t)."""
    n = s.shape[-1]
    out = np.zeros(s.shape)
    for index in np.ndindex(s.shape[:-1]):
        for t in range(n):
            seen = range(t + 1) if causal else range(n)
            vmax = max(np.abs(v[(*index, i)]).max() for i in seen)
            spread = max(s[(*index, i)] for i in seen) - min(s[(*index, i)] for i in seen)
            a, b, c = g1[(*index, t)], gh[(*index, t)], g0[(*index, t)]
            out[(*index, t)] = vmax * (abs(b) + abs(a - b) * spread + abs(c - b))
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_output_scale_is_the_formula_of_spec_7_1(causal: bool) -> None:
    rng = np.random.default_rng(3)
    v, s = rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9)) * 4
    g1, gh, g0 = rng.uniform(-1, 2, size=(3, 2, 9))
    got = output_scale(v, s, g1, gh, g0, causal=causal)
    np.testing.assert_allclose(got, _scale_by_loops(v, s, g1, gh, g0, causal), rtol=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_output_scale_of_an_empty_sequence_is_empty(causal: bool) -> None:
    """Found in issue 21: the bidirectional scale of N = 0 raised numpy's "zero-size array to
    reduction operation maximum"."""
    scale = output_scale(np.zeros((2, 0, 3)), np.zeros((2, 0)), 1.0, 1.0, 0.0, causal=causal)
    assert scale.shape == (2, 0)
    assert compare(np.zeros((2, 0, 3)), np.zeros((2, 0, 3)), scale, TOLERANCE["float64"]).passed
