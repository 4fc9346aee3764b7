"""Bad input raises an error that names the argument at fault (spec section 8, ZS-ERR-*)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import zeros_ref

N, D, DV = 5, 4, 3


def good() -> dict[str, Any]:
    """Valid arguments of one call: (2, N, D) float64 numpy q, k; (2, N, Dv) v; (2, N) logits."""
    rng = np.random.default_rng(7)
    return {
        "q": rng.normal(size=(2, N, D)),
        "k": rng.normal(size=(2, N, D)),
        "v": rng.normal(size=(2, N, DV)),
        "logits": rng.normal(size=(2, N)),
        "first": rng.normal(size=(2, N)),
        "higher": rng.normal(size=(N,)),
        "zero": 0.5,
    }


def _torch(x: np.ndarray) -> Any:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    return torch.asarray(x)


def _strict(x: np.ndarray) -> Any:
    xp = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    return xp.asarray(x)


def change(name: str, f: Callable[[Any], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(args: dict[str, Any]) -> dict[str, Any]:
        return {**args, name: f(args[name])}

    return apply


def longer(x: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate([x, np.take(x, [0], axis=axis)], axis=axis)


SHAPE_ERRORS = {
    "k-N": (change("k", lambda x: longer(x, -2)), "k"),
    "v-N": (change("v", lambda x: longer(x, -2)), "v"),
    "k-D": (change("k", lambda x: x[..., :-1]), "k"),
    "logits-N": (change("logits", lambda x: longer(x, -1)), "logits"),
    "logits-0d": (change("logits", lambda x: x[0, 0]), "logits"),
    "q-1d": (change("q", lambda x: x[0, 0]), "q"),
    "k-1d": (change("k", lambda x: x[0, 0]), "k"),
    "v-1d": (change("v", lambda x: x[0, 0]), "v"),
    "k-batch": (change("k", lambda x: np.concatenate([x, x[:1]])), "k"),
    "v-batch": (change("v", lambda x: np.concatenate([x, x[:1]])), "v"),
    "q-batch": (change("q", lambda x: x[:1].repeat(3, axis=0)), "k"),
    "logits-batch": (change("logits", lambda x: np.concatenate([x, x[:1]])), "logits"),
    "first-batch": (change("first", lambda x: np.concatenate([x, x[:1]])), "first"),
    "higher-N": (change("higher", lambda x: longer(x, -1)), "higher"),
    "zero-N": (change("zero", lambda x: np.full(N - 1, x)), "zero"),
    "first-trailing": (change("first", lambda x: x[..., None]), "first"),
}


@pytest.mark.req("ZS-ERR-SHAPE")
@pytest.mark.parametrize("case", list(SHAPE_ERRORS))
def test_shape_errors_name_the_argument(case: str) -> None:
    modify, name = SHAPE_ERRORS[case]
    args = modify(good())
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    for f in (zeros_ref.attention, zeros_ref.explicit_attention):
        with pytest.raises(ValueError, match=f"`{name}`"):
            f(q, k, v, **args)


DTYPE_ERRORS = {
    "q-int": (change("q", lambda x: x.astype(np.int64)), "q"),
    "k-int": (change("k", lambda x: x.astype(np.int32)), "k"),
    "v-complex": (change("v", lambda x: x.astype(np.complex128)), "v"),
    "q-complex": (change("q", lambda x: x.astype(np.complex128)), "q"),
    "q-bool": (change("q", lambda x: x > 0), "q"),
    "logits-bool": (change("logits", lambda x: x > 0), "logits"),
    "logits-int": (change("logits", lambda x: x.astype(np.int64)), "logits"),
    "zero-int-array": (change("zero", lambda x: np.ones(N, dtype=np.int64)), "zero"),
    "k-float32": (change("k", lambda x: x.astype(np.float32)), "k"),
    "v-float32": (change("v", lambda x: x.astype(np.float32)), "v"),
    "logits-float16": (change("logits", lambda x: x.astype(np.float16)), "logits"),
    "first-float32": (change("first", lambda x: x.astype(np.float32)), "first"),
    "k-torch": (change("k", _torch), "k"),
    "v-torch": (change("v", _torch), "v"),
    "logits-strict": (change("logits", _strict), "logits"),
    "higher-torch": (change("higher", _torch), "higher"),
    "q-list": (change("q", lambda x: x.tolist()), "q"),
    "k-list": (change("k", lambda x: x.tolist()), "k"),
    "v-none": (change("v", lambda x: None), "v"),
    "logits-list": (change("logits", lambda x: x.tolist()), "logits"),
    "first-bool": (change("first", lambda x: True), "first"),
    "higher-string": (change("higher", lambda x: "1.0"), "higher"),
    "zero-none": (change("zero", lambda x: None), "zero"),
    "zero-list": (change("zero", lambda x: [0.5] * N), "zero"),
}


@pytest.mark.req("ZS-ERR-DTYPE")
@pytest.mark.parametrize("case", list(DTYPE_ERRORS))
def test_type_errors_name_the_argument(case: str) -> None:
    modify, name = DTYPE_ERRORS[case]
    args = modify(good())
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    for f in (zeros_ref.attention, zeros_ref.explicit_attention):
        with pytest.raises(TypeError, match=f"`{name}`"):
            f(q, k, v, **args)


@pytest.mark.req("ZS-ERR-DTYPE")
def test_torch_query_with_numpy_key() -> None:
    args = good()
    with pytest.raises(TypeError, match="`k`"):
        zeros_ref.attention(_torch(args["q"]), args["k"], _torch(args["v"]))


def test_good_arguments_are_accepted() -> None:
    """The error tests start from arguments that work, so each error comes from its change."""
    args = good()
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    assert zeros_ref.attention(q, k, v, **args).shape == (2, N, DV)
    assert zeros_ref.explicit_attention(q, k, v, **args).shape == (2, N, DV)
    ok = {**args, "first": np.float32(0.5), "higher": 2, "zero": np.asarray(0.25)}
    assert zeros_ref.attention(q, k, v, **ok).shape == (2, N, DV)


@pytest.mark.parametrize("chunk_size", [0, -1, True, 2.5, "64", None])
def test_bad_chunk_size(chunk_size: Any) -> None:
    args = good()
    with pytest.raises((ValueError, TypeError), match="`chunk_size`"):
        zeros_ref.attention(args["q"], args["k"], args["v"], chunk_size=chunk_size)


CAUSAL_NOT_BOOL = [1, 0, "yes", None]


@pytest.mark.parametrize("causal", CAUSAL_NOT_BOOL)
def test_causal_must_be_a_bool(causal: Any) -> None:
    args = good()
    with pytest.raises(TypeError, match="`causal`"):
        zeros_ref.attention(args["q"], args["k"], args["v"], causal=causal)


@pytest.mark.parametrize("causal", CAUSAL_NOT_BOOL)
def test_explicit_forms_check_causal(causal: Any) -> None:
    """`explicit_attention` and `weights` take the same `causal` as `attention` and must not
    read a non-bool by its truth value (``causal="no"`` would silently mean causal)."""
    args = good()
    with pytest.raises(TypeError, match="`causal`"):
        zeros_ref.explicit_attention(args["q"], args["k"], args["v"], causal=causal)
    with pytest.raises(TypeError, match="`causal`"):
        zeros_ref.weights(args["logits"], causal=causal)


@pytest.mark.req("ZS-ERR-STATE")
@pytest.mark.parametrize("state", [{}, 0, "state", np.zeros((2, 3, D, DV))])
def test_state_of_wrong_type(state: Any) -> None:
    args = good()
    with pytest.raises(TypeError, match="`state`"):
        zeros_ref.attention(args["q"], args["k"], args["v"], state=state)


def _empty(dtype: str, explicit_logits: bool) -> tuple[tuple, dict[str, Any]]:
    q = np.zeros((2, 3, 0, D), dtype=dtype)
    k = np.zeros((3, 0, D), dtype=dtype)
    v = np.zeros((2, 1, 0, DV), dtype=dtype)
    logits = np.zeros((3, 0), dtype=dtype) if explicit_logits else None
    return (q, k, v), {"logits": logits, "first": np.zeros(0, dtype=dtype), "higher": 0.5}


EMPTY_CASES = pytest.mark.parametrize(
    ("dtype", "causal", "explicit_logits"),
    [(dtype, causal, explicit) for dtype in ("float64", "float32", "float16")
     for causal in (True, False) for explicit in (True, False)],
)


@pytest.mark.req("ZS-ERR-EMPTY")
@EMPTY_CASES
def test_empty_sequence(dtype: str, causal: bool, explicit_logits: bool) -> None:
    arrays, kwargs = _empty(dtype, explicit_logits)
    out = zeros_ref.attention(*arrays, causal=causal, **kwargs)
    assert out.shape == (2, 3, 0, DV)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.req("ZS-ERR-EMPTY")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_empty_sequence_explicit_forms(causal: bool) -> None:
    """`explicit_attention` promises the result of `attention`; `weights` of N = 0 is (.., 0, 0)."""
    dtype = "float32"
    arrays, kwargs = _empty(dtype, explicit_logits=False)
    out = zeros_ref.explicit_attention(*arrays, causal=causal, **kwargs)
    assert out.shape == (2, 3, 0, DV)
    assert out.dtype == np.dtype(dtype)
    r = zeros_ref.weights(np.zeros((3, 0), dtype=dtype), causal=causal)
    assert r.shape == (3, 0, 0) and r.dtype == np.dtype(dtype)


@pytest.mark.req("ZS-ERR-DTYPE", "ZS-ERR-SHAPE")
def test_weights_validates_its_arguments() -> None:
    s = np.zeros((2, N))
    with pytest.raises(TypeError, match="`logits`"):
        zeros_ref.weights(s.astype(np.int64))
    with pytest.raises(TypeError, match="`logits`"):
        zeros_ref.weights(s.tolist())
    with pytest.raises(ValueError, match="`logits`"):
        zeros_ref.weights(np.asarray(0.0))
    with pytest.raises(ValueError, match="`first`"):
        zeros_ref.weights(s, first=np.zeros(N + 1))
    with pytest.raises(ValueError, match="`zero`"):
        zeros_ref.weights(s, zero=np.zeros((3, N)))
    with pytest.raises(TypeError, match="`higher`"):
        zeros_ref.weights(s, higher=np.zeros(N, dtype=np.float32))
    with pytest.raises(TypeError, match="`higher`"):
        zeros_ref.weights(s, higher=False)
