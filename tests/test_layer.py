"""`zeros_ref.layer` (spec section 13) against the independent mpmath evaluation, the layer
golden files, streaming, other array libraries, and its errors."""

from __future__ import annotations

import re
import warnings

import mp_definition as mpd
import numpy as np
import pytest

import zeros_ref
from zeros_conformance import compare, golden_layer

CASES = {case.name: case for case in golden_layer.load()}


def row_scale(out: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The layer's error scale of spec 13 (ZS-LAYER-REFERENCE): the largest magnitude of the
    reference's row, or of the output bias."""
    return np.maximum(np.max(np.abs(out), axis=-1), np.max(np.abs(params["bo"])))


@pytest.mark.req("ZS-LAYER-REFERENCE")
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_agrees_with_mpmath_on_the_golden_cases(name: str) -> None:
    case = CASES[name]
    exact = mpd.layer(case.x, case.params, **case.options)
    ours = zeros_ref.layer(case.x, case.params, **case.options)
    result = compare(ours, exact, row_scale(exact, case.params), 1e-12)
    assert result.passed, result.describe()
    stored = compare(case.expected, exact, row_scale(exact, case.params), 1e-12)
    assert stored.passed, stored.describe()


def test_golden_cases_cover_the_options() -> None:
    options = [case.options for case in CASES.values()]
    assert {o["causal"] for o in options} == {True, False}
    assert {o["first_layer"] for o in options} == {True, False}
    assert {o["rope"] for o in options} == {"half", "interleaved", None}
    assert {o["norm"] for o in options} == {True, False}
    spans = [np.ptp(zeros_ref.deviation_logits(case.x @ case.params["wu"])) for case in
             CASES.values()]
    assert max(spans) > 100  # parameters that spread the logits over hundreds


@pytest.mark.req("ZS-LAYER-STREAM")
@pytest.mark.parametrize("rope", ["half", "interleaved", None])
def test_prefill_and_decode_steps_equal_one_call(rope: str | None) -> None:
    params = zeros_ref.random_layer_params(8, 2, seed=3, logit_scale=3.0)
    x = np.random.default_rng(4).normal(size=(2, 80, 8))
    whole = zeros_ref.layer(x, params, heads=2, first_layer=True, rope=rope)
    out, state = zeros_ref.layer(x[:, :70], params, heads=2, first_layer=True, rope=rope,
                                 return_state=True)
    pieces = [out]
    for t in range(70, 80):
        out, state = zeros_ref.layer(x[:, t:t + 1], params, heads=2, first_layer=True,
                                     rope=rope, state=state, return_state=True)
        pieces.append(out)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-12)
    assert state.length == 80 and state.u_sum.shape == (2, 2, 4)


def test_layer_on_other_libraries_and_half_precision() -> None:
    params = zeros_ref.random_layer_params(8, 2, seed=5)
    x = np.random.default_rng(6).normal(size=(3, 9, 8))
    expected = zeros_ref.layer(x, params, heads=2, causal=False)
    torch = pytest.importorskip("torch", reason="needs torch")
    out = zeros_ref.layer(torch.asarray(x), {k: torch.asarray(v) for k, v in params.items()},
                          heads=2, causal=False)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    half = zeros_ref.layer(x.astype(np.float16), {k: v.astype(np.float16) for k, v in
                                                  params.items()}, heads=2)
    assert half.dtype == np.float16 and np.all(np.isfinite(half))


def test_extreme_gate_projections_do_not_overflow() -> None:
    params = zeros_ref.random_layer_params(4, 1, seed=7)
    params["bg"] = np.array([-1e4, 1e4, -1e4])
    x = np.random.default_rng(8).normal(size=(5, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = zeros_ref.layer(x, params, heads=1, first_layer=True)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize(("dtype", "fine", "scale"), [("float64", 1e60, 1e160),
                                                      ("float32", 1e8, 1e20)])
def test_x_that_overflows_the_logits_is_named(dtype: str, fine: float, scale: float) -> None:
    """Finite x whose deviation logits overflow raises naming x (issue 21: it gave NaN); a
    non-finite x is non-finite input and gives NaN without an error."""
    params = {k: v.astype(dtype) for k, v in zeros_ref.random_layer_params(8, 2).items()}
    x = np.random.default_rng(9).normal(size=(5, 8)).astype(dtype)
    assert np.all(np.isfinite(zeros_ref.layer(x * fine, params, heads=2)))
    with pytest.raises(ValueError, match=r"^`x` is too large for the layer"):
        zeros_ref.layer(x * scale, params, heads=2)
    x[3, 1] = np.nan
    assert np.isnan(zeros_ref.layer(x * scale, params, heads=2)[3:]).all()


def test_empty_sequence() -> None:
    params = zeros_ref.random_layer_params(4, 2)
    out, state = zeros_ref.layer(np.zeros((2, 0, 4)), params, heads=2, return_state=True)
    assert out.shape == (2, 0, 4) and state.length == 0


def test_random_params_are_seeded_and_complete() -> None:
    a = zeros_ref.random_layer_params(12, 3, seed=1)
    b = zeros_ref.random_layer_params(12, 3, seed=1)
    assert list(a) == list(zeros_ref.PARAMETERS)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["wg"].shape == (12, 9) and a["mu"].shape == (3, 4) and a["log_tau"].shape == (3,)
    assert not np.array_equal(a["wq"], zeros_ref.random_layer_params(12, 3, seed=2)["wq"])


def _bad_calls():
    params = zeros_ref.random_layer_params(8, 2)
    x = np.zeros((2, 5, 8))
    missing = {k: v for k, v in params.items() if k != "wu"}
    return [
        ("missing name", (x, missing), {"heads": 2}, ValueError, "missing ['wu']"),
        ("unknown name", (x, {**params, "scale": np.ones(1)}), {"heads": 2}, ValueError,
         "unknown ['scale']"),
        ("shape", (x, {**params, "wq": np.ones((8, 4))}), {"heads": 2}, ValueError,
         "params['wq']"),
        ("dtype", (x, {**params, "bo": params["bo"].astype(np.float32)}), {"heads": 2},
         TypeError, "params['bo']"),
        ("heads", (x, params), {"heads": 3}, ValueError, "divisible by `heads`"),
        ("odd d with rope", (np.zeros((2, 5, 6)), zeros_ref.random_layer_params(6, 2)),
         {"heads": 2}, ValueError, "`rope` needs an even head width"),
        ("rope", (x, params), {"heads": 2, "rope": "both"}, ValueError, "`rope`"),
        ("first_layer", (x, params), {"heads": 2, "first_layer": 1}, TypeError,
         "`first_layer`"),
        ("x dtype", (np.zeros((2, 5, 8), dtype=np.int64), params), {"heads": 2}, TypeError,
         "`x`"),
        ("state when bidirectional", (x, params), {"heads": 2, "causal": False,
                                                   "return_state": True}, ValueError, "`state`"),
        ("params type", (x, [1, 2]), {"heads": 2}, TypeError, "`params`"),
    ]


@pytest.mark.parametrize(("label", "args", "kwargs", "kind", "named"), _bad_calls(),
                         ids=[c[0] for c in _bad_calls()])
def test_bad_arguments_raise_naming_them(label, args, kwargs, kind, named) -> None:
    with pytest.raises(kind, match=re.escape(named)):
        zeros_ref.layer(*args, **kwargs)


def test_a_state_from_other_shapes_is_rejected() -> None:
    params = zeros_ref.random_layer_params(8, 2)
    _, state = zeros_ref.layer(np.zeros((2, 5, 8)), params, heads=2, return_state=True)
    with pytest.raises(ValueError, match="`state`"):
        zeros_ref.layer(np.zeros((3, 5, 8)), params, heads=2, state=state)
