"""Checks of spec section 13: the whole layer (feature "layer")."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np

import zeros_ref

from .. import golden_layer, golden_varlen
from .._compare import TOLERANCE, compare
from .._harness import Context, Measurement, NotApplicable, Run, agreement, check

OPTIONS = [  # (first_layer, rope, norm)
    (False, "half", True),
    (True, "interleaved", True),
    (True, "half", False),
    (False, None, False),
]
"""Layer options drawn in ZS-LAYER-REFERENCE: both gates, both pairings and none, norm on and
off."""


def _to_backend(ctx: Context, x: np.ndarray, params: dict[str, np.ndarray],
                dtype: str) -> tuple[Any, dict[str, Any]]:
    b = ctx.backend
    return b.from_numpy(x, dtype), {name: b.from_numpy(v, dtype) for name, v in params.items()}


def _layer(ctx: Context, x: np.ndarray, params: dict[str, np.ndarray], dtype: str,
           **options: Any) -> np.ndarray:
    """The backend's layer on float64 numpy inputs converted to `dtype`, back in float64."""
    bx, bparams = _to_backend(ctx, x, params, dtype)
    ctx.last_call = {"seed": ctx.seed, "x": f"{dtype} array {list(x.shape)}", **options}
    return np.asarray(ctx.backend.to_numpy(ctx.backend.layer(bx, bparams, **options)),
                      dtype=np.float64)


def _scale(reference: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Error scale of a row (spec 13, ZS-LAYER-REFERENCE): the largest magnitude of the
    reference's row, or of the output bias."""
    return np.maximum(np.max(np.abs(reference), axis=-1), np.max(np.abs(params["bo"])))


def _agreement(ctx: Context, x: np.ndarray, params: dict[str, np.ndarray], dtype: str,
               case: dict[str, Any], expected: np.ndarray | None = None,
               **options: Any) -> Measurement:
    """The backend's layer against the float64 reference on the rounded inputs (or against
    `expected` where given)."""
    return _layer_agreement(ctx, x, params, dtype, options,
                            run=lambda: _layer(ctx, x, params, dtype, **options),
                            case={**case, "dtype": dtype, "x": list(x.shape), **options},
                            expected=expected)


def _layer_agreement(ctx: Context, x: np.ndarray, params: dict[str, np.ndarray], dtype: str,
                     options: dict[str, Any], *, run: Run, case: dict[str, Any],
                     expected: np.ndarray | None = None) -> Measurement:
    """`agreement` of the layer's output from `run()` with `expected`, or with the reference
    layer on the rounded inputs, relative to the layer's error scale (`_scale`)."""

    def want(seen: dict[str, Any]) -> np.ndarray:
        if expected is not None:
            return expected
        return zeros_ref.layer(seen["x"], seen["params"], **options)

    return agreement(ctx, {"x": x, "params": params}, dtype, run=run, expected=want,
                     scale=lambda seen, reference: _scale(reference, seen["params"]), case=case)


def _draw(ctx: Context, salt: str, batch: tuple[int, ...], n: int, dm: int, heads: int,
          logit_scale: float = 1.0) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    rng = ctx.rng(salt)
    seed = int(rng.integers(2**31))
    params = zeros_ref.random_layer_params(dm, heads, seed=seed, logit_scale=logit_scale)
    return rng.normal(size=(*batch, n, dm)), params, seed


@check("ZS-LAYER-REFERENCE")
def layer_matches_the_definition(ctx: Context) -> Iterator[Measurement]:
    """Drawn parameters and inputs in every claimed dtype and option; the golden layers."""
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            for j, (first_layer, rope, norm) in enumerate(OPTIONS):
                scale = 10.0 if j % 2 else 1.0  # wide logits on every other option
                x, params, seed = _draw(ctx, f"layer-{dtype}-{causal}-{j}", (2,), 37, 8, 2,
                                        scale)
                yield _agreement(ctx, x, params, dtype, {"param_seed": seed,
                                                          "logit_scale": scale},
                                 heads=2, causal=causal, first_layer=first_layer, rope=rope,
                                 norm=norm)
    dtype = ctx.precise_dtype()
    for case in golden_layer.load():
        if not case.options["causal"] and not ctx.claims("bidirectional"):
            continue
        yield _agreement(ctx, case.x, case.params, dtype, {"golden": case.name},
                         expected=case.expected if dtype == "float64" else None,
                         **case.options)


@check("ZS-LAYER-CAUSAL")
def layer_ignores_the_future(ctx: Context) -> Iterator[Measurement]:
    dtype, t0 = ctx.precise_dtype(), 20
    for rope in ("half", "interleaved"):
        x, params, seed = _draw(ctx, f"layer-causal-{rope}", (2,), 40, 8, 2)
        moved = x.copy()
        moved[:, t0:] = ctx.rng(f"layer-future-{rope}").normal(size=moved[:, t0:].shape) * 3
        options = {"heads": 2, "causal": True, "first_layer": True, "rope": rope, "norm": True}
        a = _layer(ctx, x, params, dtype, **options)[:, :t0]
        b = _layer(ctx, moved, params, dtype, **options)[:, :t0]
        case = {"param_seed": seed, "dtype": dtype, "changed_from": t0, **options}
        yield Measurement.of(compare(b, a, _scale(a, params), TOLERANCE[dtype]), case)


def _uniform_weights(params: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """Parameters that make the weights uniform, r[t, i] = tanh(1) / t (spec ZS-LAYER-ROPE):
    zero q and k biases, gates first = higher = sigmoid(-40), zero = tanh(1), no output
    bias."""
    uniform = dict(params)
    uniform["bq"] = np.zeros_like(params["bq"])
    uniform["bk"] = np.zeros_like(params["bk"])
    uniform["bo"] = np.zeros_like(params["bo"])
    uniform["wg"] = np.zeros_like(params["wg"])
    uniform["bg"] = np.tile([-40.0, -40.0, 1.0], heads)
    return uniform


@check("ZS-LAYER-ROPE")
def rope_is_relative(ctx: Context) -> Iterator[Measurement]:
    """Prepending m zero tokens shifts every position by m; a relative rotation keeps t out_t."""
    dtype, m, n = ctx.precise_dtype(), 7, 24
    for rope in ("half", "interleaved"):
        x, params, seed = _draw(ctx, f"layer-rope-{rope}", (2,), n, 8, 2)
        params = _uniform_weights(params, 2)
        shifted = np.concatenate([np.zeros((2, m, 8)), x], axis=1)
        options = {"heads": 2, "causal": True, "first_layer": True, "rope": rope, "norm": False}
        plain = _layer(ctx, x, params, dtype, **options)
        later = _layer(ctx, shifted, params, dtype, **options)[:, m:]
        t = np.arange(1.0, n + 1)[:, None]  # (N, 1) prefix lengths
        case = {"param_seed": seed, "dtype": dtype, "prepended_zero_tokens": m, **options}
        scaled = plain * t
        result = compare(later * (t + m), scaled, np.max(np.abs(scaled), axis=-1),
                         TOLERANCE[dtype])
        yield Measurement.of(result, case)


@check("ZS-LAYER-STREAM")
def layer_streams(ctx: Context) -> Iterator[Measurement]:
    """A prefill, pieces and one-token steps against one call."""
    if not ctx.claims("state"):
        raise NotApplicable('streaming layers need the "state" feature too')
    for dtype in ctx.dtypes:
        x, params, seed = _draw(ctx, f"layer-stream-{dtype}", (2,), 80, 8, 2, 3.0)
        options = {"heads": 2, "causal": True, "first_layer": True, "rope": "half",
                   "norm": True}
        case = {"param_seed": seed, "dtype": dtype, "cuts": [50, 70, "then one-token steps"],
                **options}
        yield _layer_agreement(ctx, x, params, dtype, options, case=case,
                               run=partial(_streamed, ctx, x, params, dtype, options))


def _streamed(ctx: Context, x: np.ndarray, params: dict[str, np.ndarray], dtype: str,
              options: dict[str, Any]) -> np.ndarray:
    """The backend's layer on a prefill of 50 tokens, 20 more, then one-token steps, each call
    continuing from the state of the one before; float64."""
    b = ctx.backend
    bx, bparams = _to_backend(ctx, x, params, dtype)
    pieces, state = [], None
    for start, end in [(0, 50), (50, 70), *((t, t + 1) for t in range(70, x.shape[1]))]:
        out, state = b.layer(bx[:, start:end], bparams, **options, state=state,
                             return_state=True)
        pieces.append(np.asarray(b.to_numpy(out), dtype=np.float64))
    return np.concatenate(pieces, axis=1)


@check("ZS-LAYER-VARLEN")
def packed_layers_restart(ctx: Context) -> Iterator[Measurement]:
    """A packed layer call, empty sequences included, against the reference layer on each
    sequence alone; the packed layer golden cases against their stored float64 outputs (in
    float64; otherwise against the reference on the rounded inputs)."""
    if not ctx.claims("varlen"):
        raise NotApplicable('packed layers need the feature "varlen"')
    b = ctx.backend

    def run(x: np.ndarray, params: dict, dtype: str, options: dict,
            offsets: np.ndarray) -> np.ndarray:
        bx, bparams = _to_backend(ctx, x, params, dtype)
        cu_seqlens = b.from_numpy(np.asarray(offsets, dtype=np.int64), "int64")
        out = b.layer(bx, bparams, cu_seqlens=cu_seqlens, **options)
        return np.asarray(b.to_numpy(out), dtype=np.float64)

    def separately(seen: dict[str, Any], options: dict, offsets: np.ndarray) -> np.ndarray:
        return np.concatenate([zeros_ref.layer(seen["x"][..., a:z, :], seen["params"],
                                               **options)
                               for a, z in pairwise(offsets)], axis=-2)

    def measure(x: np.ndarray, params: dict, dtype: str, options: dict, offsets: np.ndarray,
                record: dict[str, Any], stored: np.ndarray | None = None) -> Measurement:
        return agreement(ctx, {"x": x, "params": params}, dtype,
                         run=partial(run, x, params, dtype, options, offsets),
                         expected=(lambda seen: stored) if stored is not None else
                         partial(separately, options=options, offsets=offsets),
                         scale=lambda seen, reference: _scale(reference, seen["params"]),
                         case={**record, **options})

    lengths = [0, 1, 7, 0, 23, 9]
    offsets = np.cumsum([0, *lengths])
    for dtype in ctx.dtypes:
        for causal in ctx.modes():
            x, params, seed = _draw(ctx, f"layer-varlen-{dtype}-{causal}", (2,), int(offsets[-1]),
                                    8, 2)
            options = {"heads": 2, "causal": causal, "first_layer": True, "rope": "half"}
            yield measure(x, params, dtype, options, offsets,
                          {"param_seed": seed, "dtype": dtype, "lengths": lengths})
    dtype = ctx.precise_dtype()
    for golden in golden_varlen.layer_cases():
        if not golden.options["causal"] and not ctx.claims("bidirectional"):
            continue
        yield measure(golden.x, golden.params, dtype, golden.options, golden.cu_seqlens,
                      {"golden": golden.name, "dtype": dtype},
                      stored=golden.expected if dtype == "float64" else None)
