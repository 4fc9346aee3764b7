"""Scans of the array-API chunk form: static shapes, no branch on array values.

The array API has `cumulative_sum` but no cumulative maximum, no segmented scan and no loop
primitive. These three fill the gap with elementwise operations on whole arrays, so that a
tracer (``jax.jit``) sees the same program for any data:

- `segmented_scan`: an inclusive scan along the chunk axis that restarts where a sequence
  starts (Hillis and Steele: log2(nc) steps, never combining values of two sequences);
- `cumulative_max`: the running maximum along the last axis (log2(C) steps);
- `loop`: the default `Scan` of the slabs, a Python loop over the leading axis (the number
  of slabs is a shape, not a value); ``jax.lax.scan`` has the same signature and replaces
  it under ``jax.jit``, so that the compiled program does not grow with the sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Scan", "cumulative_max", "exclusive", "loop", "segmented_scan"]

Scan = Callable[[Callable[[Any, Any], tuple[Any, Any]], Any, Any], tuple[Any, Any]]
"""``scan(step, carry, xs) -> (carry, ys)``: `step` applied to each slice of `xs` along its
leading axis in turn, threading `carry`; `ys` stacks what each step returns (the signature of
``jax.lax.scan``). `xs` and `ys` are arrays, tuples (named ones included) of them, or None."""


def segmented_scan(xp: Any, x: Any, start: Any, combine: Callable[[Any, Any], Any]) -> Any:
    """Inclusive scan of `x` (nc, ...) along axis 0 with the associative `combine` (such as
    ``xp.maximum`` or ``xp.add``), restarting where `start` (nc,) bool is True."""
    value, flag = x, start
    step, count = 1, x.shape[0]
    tail = (1,) * (x.ndim - 1)
    while step < count:
        joined = combine(value[:-step, ...], value[step:, ...])
        keep = xp.reshape(flag[step:], (-1, *tail))
        value = xp.concat([value[:step, ...], xp.where(keep, value[step:, ...], joined)], axis=0)
        flag = xp.concat([flag[:step], flag[step:] | flag[:-step]])
        step *= 2
    return value


def exclusive(xp: Any, inclusive: Any, start: Any) -> Any:
    """The exclusive form of a segmented sum along axis 0: the value of the chunk before, zero
    where `start` (nc,) begins a sequence (no subtraction, so no rounding is added)."""
    tail = (1,) * (inclusive.ndim - 1)
    zero = xp.zeros_like(inclusive[:1, ...])
    shifted = xp.concat([zero, inclusive[:-1, ...]], axis=0)
    return xp.where(xp.reshape(start, (-1, *tail)), zero, shifted)


def cumulative_max(xp: Any, x: Any) -> Any:
    """The running maximum of `x` along its last axis, ``max(x[..., :t + 1])`` at t."""
    step, count = 1, x.shape[-1]
    while step < count:
        x = xp.concat([x[..., :step], xp.maximum(x[..., step:], x[..., :-step])], axis=-1)
        step *= 2
    return x


def loop(xp: Any) -> Scan:
    """The `Scan` of a Python loop over the leading axis, stacking the results with `xp`."""

    def scan(step: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any) -> tuple:
        results = []
        for index in range(_leading(xs)):
            carry, y = step(carry, _tree(lambda x, i=index: x[i, ...], xs))
            results.append(y)
        return carry, _tree(lambda *ys: xp.stack(ys), *results)

    return scan


def _leading(tree: Any) -> int:
    """The length of the leading axis of the first array in `tree`."""
    if isinstance(tree, tuple):
        return next(_leading(x) for x in tree if x is not None)
    return tree.shape[0]


def _tree(function: Callable[..., Any], *trees: Any) -> Any:
    """`function` applied leaf by leaf to trees of one structure (arrays in tuples, named
    ones included; None stays None)."""
    head = trees[0]
    if head is None:
        return None
    if isinstance(head, tuple):
        parts = [_tree(function, *leaves) for leaves in zip(*trees, strict=True)]
        return type(head)(*parts) if hasattr(head, "_fields") else tuple(parts)
    return function(*trees)
