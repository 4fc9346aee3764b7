"""Checks of spec section 8: bad input and non-finite values."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._compare import TOLERANCE, compare
from .._harness import (
    Context,
    Measurement,
    as_numpy,
    check,
    describe,
    raises,
    random_inputs,
    run_backend,
    scale_of,
)


def _call(ctx: Context, dtype: str, **arrays: np.ndarray | float):
    """A thunk calling the backend on numpy inputs converted to `dtype`."""
    b = ctx.backend
    args = {n: b.from_numpy(x, dtype) if isinstance(x, np.ndarray) else x
            for n, x in arrays.items()}
    return lambda: ctx.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@check("ZS-ERR-SHAPE")
def shape_errors_name_the_argument(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("shape-errors")
    dtype = ctx.precise_dtype()
    x = random_inputs(rng, (2,), 8, 4, 3)
    good = {"q": x["q"], "k": x["k"], "v": x["v"], "logits": x["logits"]}
    bad_cases = [
        ("k", {"k": x["k"][:, :7]}, "N of k"),
        ("v", {"v": x["v"][:, :5]}, "N of v"),
        ("k", {"k": x["k"][..., :3]}, "D of k"),
        ("q", {"q": x["q"][..., :0], "k": x["k"][..., :0]}, "D = 0"),
        ("v", {"v": x["v"][..., :0]}, "Dv = 0"),
        ("logits", {"logits": x["logits"][:, :6]}, "N of logits"),
        ("k", {"k": np.stack([x["k"]] * 3)[:, 0]}, "leading axes"),
        ("first", {"first": np.ones(5)}, "gate length"),
        ("higher", {"higher": np.ones((2, 3))}, "gate length"),
        ("zero", {"zero": np.ones((3, 8))}, "gate leading axes"),
    ]
    for name, change, label in bad_cases:
        yield raises(_call(ctx, dtype, **{**good, **change}), (ValueError,), name,
                     {"bad": label, "dtype": dtype})


@check("ZS-ERR-DTYPE")
def dtype_errors_name_the_argument(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("dtype-errors")
    x = random_inputs(rng, (2,), 8, 4, 3)
    dtype = ctx.precise_dtype()
    b = ctx.backend
    q, k, v = (b.from_numpy(x[n], dtype) for n in ("q", "k", "v"))
    for name, value in (("first", True), ("zero", "0.5")):
        yield raises(lambda n=name, g=value: ctx.attention(q, k, v, **{n: g}), (TypeError,),
                     name, {"bad": f"{name}={value!r}"})
    for other in ctx.dtypes[:-1]:
        mixed = b.from_numpy(x["v"], other)
        yield raises(lambda m=mixed: ctx.attention(q, k, m), (TypeError,), "v",
                     {"bad": f"v in {other}, q and k in {dtype}"})


@check("ZS-ERR-EMPTY")
def empty_sequences(ctx: Context) -> Iterator[Measurement]:
    rng = ctx.rng("empty")
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            x = random_inputs(rng, (2, 3), 0, 4, 5)
            case = describe(x, dtype=dtype, causal=causal)
            try:
                out = run_backend(ctx, x, dtype, causal=causal)
            except Exception as exc:
                yield Measurement(1.0, 0.0, case, quantity="failure", message=repr(exc))
                continue
            reference = ctx.backend.from_numpy(np.zeros(1), dtype)
            good = tuple(out.shape) == (2, 3, 0, 5) and out.dtype == reference.dtype
            yield Measurement(0.0 if good else 1.0, 0.0, case, quantity="wrong result",
                              message=f"shape {tuple(out.shape)}, dtype {out.dtype}")


def _poisoned_positions(ctx: Context, salt: str, names: tuple[str, ...]) -> Iterator[Measurement]:
    """NaN or inf at position i of each input in `names` (mid-chunk for any chunk length)
    leaves out[:i] unchanged up to rounding (a leak gives NaN there, far outside any
    tolerance)."""
    rng = ctx.rng(salt)
    n, i = 100, 37
    for dtype in ctx.dtypes:
        clean = random_inputs(rng, (2,), n, 5, 4)
        base = as_numpy(ctx, run_backend(ctx, clean, dtype, causal=True))
        scale = scale_of(clean, causal=True)[..., :i]
        for name in names:
            for bad in (np.nan, np.inf):
                poisoned = {key: np.copy(value) for key, value in clean.items()}
                if name in ("q", "k", "v"):
                    poisoned[name][0, i, 1] = bad
                else:
                    poisoned[name][0, i] = bad
                case = describe(clean, dtype=dtype, poisoned=name, value=str(bad), position=i)
                try:
                    with np.errstate(all="ignore"):
                        out = as_numpy(ctx, run_backend(ctx, poisoned, dtype, causal=True))
                except Exception as exc:
                    yield Measurement(np.inf, TOLERANCE[dtype], case, message=f"raised {exc!r}")
                    continue
                result = compare(out[..., :i, :], base[..., :i, :], scale, TOLERANCE[dtype])
                yield Measurement.of(result, case)


@check("ZS-ERR-NONFINITE")
def nonfinite_weights_stay_in_the_future(ctx: Context) -> Iterator[Measurement]:
    """What enters the weights: q, k, the logits and the gates."""
    yield from _poisoned_positions(ctx, "nonfinite", ("k", "q", "logits", "first", "higher",
                                                      "zero"))


@check("ZS-ERR-NONFINITE-V")
def nonfinite_values_stay_in_the_future(ctx: Context) -> Iterator[Measurement]:
    """What enters through the product with the weights: v."""
    yield from _poisoned_positions(ctx, "nonfinite-v", ("v",))
