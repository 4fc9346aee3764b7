"""Checks of spec section 5: streaming with a carried state."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import numpy as np

from .. import protocol
from .._harness import (
    Context,
    Measurement,
    agreement,
    as_numpy,
    check,
    describe,
    raises,
    random_inputs,
    tokens,
)


def streamed(ctx: Context, inputs: dict[str, Any], dtype: str, cuts: list[int]) -> np.ndarray:
    """Outputs of successive calls on the pieces between `cuts`, passing the state on."""
    b = ctx.backend
    state, outputs = None, []
    bounds = [0, *cuts, inputs["q"].shape[-2]]
    for a, z in pairwise(bounds):
        piece = {
            name: b.from_numpy(value, dtype) if isinstance(value, np.ndarray) else value
            for name, value in tokens(inputs, a, z).items()
        }
        q, k, v = piece.pop("q"), piece.pop("k"), piece.pop("v")
        out, state = ctx.attention(q, k, v, **piece, causal=True, state=state, return_state=True)
        outputs.append(as_numpy(ctx, out))
    return np.concatenate(outputs, axis=-2)


def _streaming_agreement(
    ctx: Context, inputs: dict[str, Any], dtype: str, cuts: list[int], **record: Any
) -> Measurement:
    """The pieces between `cuts`, streamed, against the causal reference on the whole."""
    return agreement(ctx, inputs, dtype, run=lambda: streamed(ctx, inputs, dtype, cuts),
                     case=describe(inputs, dtype=dtype, cuts=cuts, **record))


@check("ZS-STREAM-PIECES")
def pieces_equal_one_call(ctx: Context) -> Iterator[Measurement]:
    """Random cuts (including empty pieces) with explicit and default logits; the final state
    of the pieces, and that of one call, each continued by a tail of 9 tokens."""
    rng = ctx.rng("pieces")
    n, tail = 150, 9
    for dtype in ctx.dtypes:
        for logits in ctx.logit_kinds():
            inputs = random_inputs(rng, (2,), n + tail, 5, 4, logits=logits)
            cuts = sorted(int(c) for c in rng.integers(0, n + 1, size=6))
            yield _streaming_agreement(ctx, inputs, dtype, [*cuts, n], tail=tail)
            yield _streaming_agreement(ctx, inputs, dtype, [n], tail=tail)


@check("ZS-STREAM-DECODE")
def decode_steps_equal_prefill(ctx: Context) -> Iterator[Measurement]:
    """A prefill of 70 tokens, then 25 one-token steps."""
    rng = ctx.rng("decode")
    for dtype in ctx.dtypes:
        for logits in ctx.logit_kinds():
            inputs = random_inputs(rng, (2,), 95, 5, 4, logits=logits)
            yield _streaming_agreement(ctx, inputs, dtype, list(range(70, 95)), decode=True)


class _Foreign:
    """An object that is no backend's state."""


@check("ZS-ERR-STATE")
def mismatched_state_is_rejected(ctx: Context) -> Iterator[Measurement]:
    """A state from other leading axes, D or Dv (`ValueError`), of another compute dtype or
    not a state at all (`TypeError`), or any state in bidirectional mode."""
    rng = ctx.rng("state-errors")
    b, dtype = ctx.backend, ctx.precise_dtype()

    def arrays(batch: tuple[int, ...], d: int, dv: int, dtype: str = dtype) -> tuple:
        x = random_inputs(rng, batch, 6, d, dv)
        return tuple(b.from_numpy(x[n], dtype) for n in ("q", "k", "v", "logits"))

    q, k, v, s = arrays((2,), 4, 3)
    _, state = ctx.attention(q, k, v, logits=s, return_state=True)
    for label, shape in (("leading axes", ((3,), 4, 3)), ("D", ((2,), 5, 3)),
                         ("Dv", ((2,), 4, 2))):
        other = arrays(*shape)
        yield raises(lambda o=other: ctx.attention(*o[:3], logits=o[3], state=state),
                     (ValueError,), "state", {"state from": "(2,), D=4, Dv=3", "other": label})
    # float16 and bfloat16 compute in float32, so only float32 and float64 states differ.
    if {"float32", "float64"} <= set(ctx.dtypes):
        narrow = arrays((2,), 4, 3, "float32")
        _, narrow_state = ctx.attention(*narrow[:3], logits=narrow[3], return_state=True)
        yield raises(lambda: ctx.attention(q, k, v, logits=s, state=narrow_state), (TypeError,),
                     "state", {"state from": "float32", "inputs": "float64"})
    for label, foreign in (("a string", "state"), ("an object of another class", _Foreign())):
        yield raises(lambda f=foreign: ctx.attention(q, k, v, logits=s, state=f), (TypeError,),
                     "state", {"state": label})
    yield raises(lambda: ctx.attention(q, k, v, logits=s, causal=False, state=state),
                 (ValueError,), "state", {"causal": False, "state": "given"})
    yield raises(lambda: ctx.attention(q, k, v, logits=s, causal=False, return_state=True),
                 (ValueError,), "return_state", {"causal": False, "return_state": True})


def merged_then_continued(ctx: Context, inputs: dict[str, Any], dtype: str, cuts: list[int],
                          n: int, tree: str) -> np.ndarray:
    """One call on the first n tokens, then the rest continued from the merge of the
    states of the pieces between `cuts` (each piece from the empty state): "flat" merges
    all at once, "halves" the merges of each half, "right" nests to the right."""
    b = ctx.backend
    merge = protocol.merge_states(b)

    def arrays(a: int, z: int) -> dict[str, Any]:
        return {name: b.from_numpy(value, dtype) if isinstance(value, np.ndarray) else value
                for name, value in tokens(inputs, a, z).items()}

    def call(piece: dict[str, Any], **options: Any) -> Any:
        q, k, v = piece.pop("q"), piece.pop("k"), piece.pop("v")
        return ctx.attention(q, k, v, **piece, causal=True, **options)

    states = [call(arrays(a, z), return_state=True)[1]
              for a, z in pairwise([0, *cuts, n])]
    if tree == "halves":
        half = len(states) // 2
        merged = merge([merge(states[:half]), merge(states[half:])])
    elif tree == "right":
        merged = states[-1]
        for st in reversed(states[:-1]):
            merged = merge([st, merged])
    else:
        merged = merge(states)
    head = call(arrays(0, n))
    tail = call(arrays(n, inputs["q"].shape[-2]), state=merged)
    return np.concatenate([as_numpy(ctx, head), as_numpy(ctx, tail)], axis=-2)


@check("ZS-STREAM-MERGE")
def merged_states_continue_one_call(ctx: Context) -> Iterator[Measurement]:
    """Pieces (one empty, one whose logits sit 1e4 above the others') summarised apart and
    merged three ways, then 9 tokens continued from the merge, with gates that read G."""
    rng = ctx.rng("merge")
    n, tail = 120, 9
    for dtype in ctx.dtypes:
        for shift in (0.0, 1e4):
            inputs = random_inputs(rng, (2,), n + tail, 5, 4)
            cuts = sorted(int(c) for c in rng.integers(1, n, size=3))
            cuts = [cuts[0], cuts[0], *cuts[1:]]  # an empty second piece
            inputs["logits"][..., cuts[1]:cuts[2]] += shift
            for tree in ("flat", "halves", "right"):
                yield agreement(
                    ctx, inputs, dtype,
                    run=lambda i=inputs, d=dtype, c=cuts, t=tree: merged_then_continued(
                        ctx, i, d, c, n, t),
                    case=describe(inputs, dtype=dtype, cuts=cuts, tail=tail, shift=shift,
                                  merge=tree))
