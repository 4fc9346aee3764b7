"""Spec section 8 on the edges a newcomer hits, for the reference and the in-repo backends:
empty feature axes, default logits past the dtype's range, and no floating-point warnings from
the internals on non-finite input."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import zeros_ref
from zeros_conformance import registry

BACKENDS = ["reference", "numpy", "torch"]


def _backend(name: str) -> Any:
    if name == "torch":
        pytest.importorskip("torch", reason="the torch backend needs torch")
    return registry.load(name)


@pytest.mark.req("ZS-ERR-SHAPE")
@pytest.mark.parametrize("explicit_logits", [True, False])
@pytest.mark.parametrize(("axis", "name"), [("D", "q"), ("Dv", "v")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_feature_axes_are_rejected(
    backend: str, axis: str, name: str, explicit_logits: bool
) -> None:
    """D = 0 or Dv = 0: a ValueError naming `q` (or `v`), from the shared validation."""
    b = _backend(backend)
    d, dv = (0, 3) if axis == "D" else (4, 0)
    q = b.from_numpy(np.ones((2, 70, d)), "float64")
    v = b.from_numpy(np.ones((2, 70, dv)), "float64")
    logits = b.from_numpy(np.zeros((2, 70)), "float64") if explicit_logits else None
    for causal in (True, False):
        with pytest.raises(ValueError, match=rf"`{name}` must have .*{axis} >= 1"):
            b.attention(q, q, v, logits=logits, causal=causal)


def _huge_key(rng: np.random.Generator, dtype: str, at: int) -> dict[str, np.ndarray]:
    """Finite inputs (2, 40, 4) whose key `at` of row 0 makes its default logit overflow."""
    scale = {"float64": 1e156, "float32": 1e22}[dtype]
    q, k, v = (rng.normal(size=(2, 40, 4)).astype(dtype) for _ in range(3))
    k[0, at] *= np.asarray(scale, dtype=dtype)
    assert np.isfinite(k).all()
    return {"q": q, "k": k, "v": v}


@pytest.mark.req("ZS-LOG-DEFAULT")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["reference", "numpy"])
def test_default_logits_past_the_range_raise(
    rng: np.random.Generator, backend: str, dtype: str, causal: bool
) -> None:
    """Keys so large that their default logit is not finite: ValueError naming `k` (and the
    same keys with explicit logits are fine: only the default logits overflow)."""
    b = _backend(backend)
    x = _huge_key(rng, dtype, at=17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"`k`.*default logits"):
            b.attention(x["q"], x["k"], x["v"], causal=causal)
        out = b.attention(x["q"], x["k"], x["v"], logits=np.zeros((2, 40), dtype), causal=causal)
    assert np.isfinite(out).all()


@pytest.mark.req("ZS-LOG-DEFAULT", "ZS-STREAM-PIECES")
@pytest.mark.parametrize("backend", ["reference", "numpy"])
def test_default_logits_past_the_range_raise_in_a_later_piece(
    rng: np.random.Generator, backend: str
) -> None:
    """The huge key arrives in a streamed piece after a normal prefill."""
    b = _backend(backend)
    x = _huge_key(rng, "float64", at=30)
    _, state = b.attention(x["q"][:, :25], x["k"][:, :25], x["v"][:, :25], return_state=True)
    with pytest.raises(ValueError, match="`k`"):
        b.attention(x["q"][:, 25:], x["k"][:, 25:], x["v"][:, 25:], state=state)


@pytest.mark.req("ZS-LOG-DEFAULT")
def test_default_logits_near_the_range_still_work(rng: np.random.Generator) -> None:
    """Keys of norm 1e150 give default logits of about 1e300: finite, and no error."""
    k = rng.normal(size=(2, 40, 4)) * 1e150
    q, v = rng.normal(size=(2, 2, 40, 4))
    s = zeros_ref.deviation_logits(k)
    assert np.isfinite(s).all() and np.abs(s).max() > 1e298
    assert np.isfinite(zeros_ref.attention(q, k, v)).all()


@pytest.mark.req("ZS-LOG-DEFAULT", "ZS-ERR-NONFINITE")
def test_torch_default_logits_past_the_range_give_nan_in_the_future(
    rng: np.random.Generator,
) -> None:
    """The torch backend checks no values on the host (no device sync): it takes spec 8's
    alternative, NaN from the overflowing key's position on, the rows before untouched."""
    b = _backend("torch")
    x = _huge_key(rng, "float64", at=17)
    clean = {**x, "k": x["k"].copy()}
    clean["k"][0, 17] = 1.0
    out = b.to_numpy(b.attention(*(b.from_numpy(x[n], "float64") for n in "qkv")))
    ref = b.to_numpy(b.attention(*(b.from_numpy(clean[n], "float64") for n in "qkv")))
    np.testing.assert_allclose(out[0, :17], ref[0, :17], rtol=0, atol=1e-12)
    assert np.isnan(out[0, 17:]).any(axis=-1).all()
    np.testing.assert_allclose(out[1], ref[1], rtol=0, atol=1e-12)


def _poisoned(rng: np.random.Generator) -> list[tuple[str, dict[str, Any]]]:
    """Non-finite values in every argument, and huge finite keys with explicit logits."""
    cases = []
    for name in ("q", "k", "v", "logits", "first", "higher", "zero"):
        for value in (np.nan, np.inf, -np.inf):
            x = {
                "q": rng.normal(size=(2, 70, 4)),
                "k": rng.normal(size=(2, 70, 4)),
                "v": rng.normal(size=(2, 70, 3)),
                "logits": rng.normal(size=(2, 70)),
                "first": rng.normal(size=(2, 70)),
                "higher": 0.5,
                "zero": 0.25,
            }
            if name in ("higher", "zero"):
                x[name] = value
            else:
                x[name][0, 33, ...] = value
            cases.append((f"{name}={value}", x))
    huge = {
        "q": rng.normal(size=(2, 70, 4)) * 1e300,
        "k": rng.normal(size=(2, 70, 4)) * 1e300,
        "v": rng.normal(size=(2, 70, 3)),
        "logits": rng.normal(size=(2, 70)),
    }
    cases.append(("huge q and k", huge))
    nan_key = {
        "q": rng.normal(size=(2, 70, 4)),
        "k": rng.normal(size=(2, 70, 4)),
        "v": rng.normal(size=(2, 70, 3)),
    }
    nan_key["k"][1, 3, 0] = np.nan
    cases.append(("default logits of a NaN key", nan_key))
    return cases


@pytest.mark.req("ZS-ERR-NONFINITE", "ZS-ERR-NONFINITE-V")
@pytest.mark.parametrize("backend", ["reference", "numpy"])
def test_nonfinite_input_raises_no_floating_point_warnings(
    rng: np.random.Generator, backend: str
) -> None:
    """NumPy's RuntimeWarnings would point at the internals' lines, which tell a caller
    nothing: the outputs (NaN where spec 8 says) are the answer."""
    b = _backend(backend)
    for label, x in _poisoned(rng):
        for causal in (True, False):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                b.attention(**x, causal=causal)
            assert not caught, (label, causal, [str(w.message) for w in caught])
