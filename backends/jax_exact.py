"""Exact powers of two on JAX arrays, for XLA's CPU code, which reads and writes subnormal
numbers as zero (flush to zero: ``jnp.float32(1e-38) * 0.01 == 0``, ``jnp.ldexp`` too).

ZS-STAB-MAGNITUDE asks for the answer wherever it is representable: a key whose entries lie
near 1e-40 in float32 keeps its direction, and values of 1e-310 in float64 reach outputs
that gates of 1e60 make normal. The jax backend therefore moves such numbers into the normal
range by powers of two applied to their bits, with integer operations (which nothing
flushes), and only where a call holds them: `directions` (of q and k) and `lift`
(values and the state's sums, undone on the outputs) branch with ``jax.lax.cond`` on one
test of the bits, so that an ordinary call pays a comparison per entry.

Every function takes float32 or float64 arrays (others are returned as they are) and works
under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from .array_api.screen import direction

__all__ = ["directions", "ldexp", "lift", "lowered", "peak_exponent", "raised"]

NONE = -(1 << 20)
"""`peak_exponent` of zeros: below every exponent."""


class _Layout(NamedTuple):
    """A binary float format: its integer dtype name, bits, significand bits, bias."""

    ints: str
    bits: int
    width: int
    bias: int


_LAYOUTS = {"float32": _Layout("int32", 32, 23, 127), "float64": _Layout("int64", 64, 52, 1023)}


def _modules() -> tuple[Any, Any]:
    import jax

    return jax.numpy, jax.lax


def _layout(x: Any) -> _Layout | None:
    return _LAYOUTS.get(str(x.dtype))


def _magnitudes(x: Any, form: _Layout) -> tuple[Any, Any]:
    """The bits of |x| as integers (ordered like the magnitudes) and the sign bits."""
    jnp, lax = _modules()
    raw = lax.bitcast_convert_type(lax.stop_gradient(x), getattr(jnp, form.ints))
    whole = (1 << (form.bits - 1)) - 1
    return raw & whole, raw & ~whole


def peak_exponent(x: Any, axis: Any) -> Any:
    """e with the largest finite |x| along `axis` in [2^e, 2^(e+1)), read from the bits
    (subnormal entries included); `NONE` where all are 0.
    Integer dtype of the layout, `axis` reduced (keepdims)."""
    jnp, lax = _modules()
    form = _layout(x)
    a, _ = _magnitudes(x, form)
    infinite = ((2 * form.bias + 1) << form.width)
    top = jnp.max(jnp.where(a < infinite, a, 0), axis=axis, keepdims=True)
    field = top >> form.width
    # A subnormal top: the position of its highest bit below the significand's width.
    highest = (form.bits - 1) - lax.clz(top)
    exponent = jnp.where(field > 0, field - form.bias, highest - form.bias - form.width + 1)
    return jnp.where(top > 0, exponent, NONE)


def ldexp(x: Any, power: Any) -> Any:
    """x 2^power, correctly rounded, subnormal inputs and results included (from the bits;
    no gradient). `power` integer, broadcast against x; non-finite x are returned as they
    are, overflow gives inf."""
    jnp, lax = _modules()
    form = _layout(x)
    ints = getattr(jnp, form.ints)
    a, sign = _magnitudes(x, form)
    power = jnp.clip(power, -(4 << 10), 4 << 10).astype(ints)
    field = a >> form.width
    one = ints(1)
    m = jnp.where(field > 0, (a & ((one << form.width) - 1)) | (one << form.width), a)
    # value = m 2^(max(field, 1) - bias - width); move m's highest bit to position `width`.
    shift = lax.clz(m) - (form.bits - 1 - form.width)
    m = m << jnp.clip(shift, 0, form.width)
    target = jnp.maximum(field, 1) + power - shift  # the biased exponent of the result
    normal = (target << form.width) | (m & ((one << form.width) - 1))
    drop = jnp.clip(1 - target, 1, form.bits - 1)  # a subnormal result: bits shifted out
    kept = m >> drop
    rest = m & ((one << drop) - 1)
    half = one << (drop - 1)
    kept = kept + ((rest > half) | ((rest == half) & ((kept & 1) == 1))).astype(ints)
    kept = jnp.where(1 - target > form.bits - 2, 0, kept)
    infinite = (2 * form.bias + 1) << form.width
    bits = jnp.where(target >= 1, jnp.where(target < 2 * form.bias + 1, normal, infinite),
                     kept)
    bits = jnp.where((m == 0) | (field == 2 * form.bias + 1), a, bits) | sign
    return lax.bitcast_convert_type(bits, x.dtype)


def _times(x: Any, power: Any) -> Any:
    """x 2^power by two multiplications (the gradient path; exact where x 2^power is
    normal), `power` within twice the exponent range."""
    jnp, lax = _modules()
    form = _layout(x)
    for part in (power // 2, power - power // 2):
        part = jnp.clip(part, 1 - form.bias, form.bias).astype(getattr(jnp, form.ints))
        x = x * lax.bitcast_convert_type((part + form.bias) << form.width, x.dtype)
    return x


def _scaled(x: Any, power: Any) -> Any:
    """x 2^power with the value of `ldexp` (no arithmetic touches it: an addition would
    flush a subnormal result) and the derivative of the multiplication."""
    return _differentiable_ldexp()(x, power)


@functools.cache
def _differentiable_ldexp() -> Any:
    import jax

    @jax.custom_jvp
    def scaled(x: Any, power: Any) -> Any:
        return ldexp(x, power)

    @scaled.defjvp
    def derivative(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
        x, power = primals
        return ldexp(x, power), _times(tangents[0], power)

    return scaled


def _holds(x: Any, below: float) -> Any:
    """Whether any entry of x is nonzero with a magnitude below `below` (0-d bool)."""
    jnp, lax = _modules()
    form = _layout(x)
    a, _ = _magnitudes(x, form)
    limit = lax.bitcast_convert_type(jnp.asarray(below, dtype=x.dtype), getattr(jnp,
                                                                                 form.ints))
    return jnp.any((a > 0) & (a < limit))


def directions(x: Any, axis: int) -> tuple[Any, Any]:
    """`screen.direction` of the vectors of x along `axis` where a flush of subnormal numbers
    cannot change them; where x holds entries below tiny / eps that are not 0 (the only
    vectors whose directions a flush can change), of x with every vector first multiplied by
    the power of two that brings its largest finite entry into [1, 2). Gradients flow as
    through a multiplication."""
    jnp, lax = _modules()
    if _layout(x) is not None:
        info = jnp.finfo(x.dtype)
        x = lax.cond(_holds(x, float(info.smallest_normal / info.eps)),
                     lambda y: _scaled(y, _power(-peak_exponent(y, axis))), lambda y: y, x)
    return direction(jnp, x, axis=axis)


def _power(power: Any) -> Any:
    """`power`, 0 where it comes from `NONE` (vectors of zeros)."""
    jnp, _ = _modules()
    return jnp.where(power < -NONE // 2, power, 0)


def lift(v: Any, kv: Any) -> Any:
    """The power of two p >= 0 (R,) int32 by which each row's values v (R, N, Dv) and state
    sums kv (S, R, 3, D, Dv) (linear in the values) are multiplied so that no entry is
    subnormal: 0 unless one is, else enough to bring the row's largest entry up to
    2^(-bias / 2) (entries up to half the exponent range below it are then normal). One power
    serves every sequence of a row: a packed row whose sequences' values lie more than half
    the exponent range apart keeps the smaller ones flushed."""
    jnp, lax = _modules()
    form = _layout(v)
    rows = v.shape[0]

    def powers(v: Any, kv: Any) -> Any:
        top = jnp.maximum(jnp.reshape(peak_exponent(v, (-2, -1)), (rows,)),
                          jnp.reshape(peak_exponent(kv, (0, 2, 3, 4)), (rows,)))
        return jnp.clip(_power(-(form.bias // 2) - top), 0, 2 * form.bias - 2).astype(jnp.int32)

    def nothing(v: Any, kv: Any) -> Any:
        return jnp.zeros((rows,), dtype=jnp.int32)

    if form is None:
        return nothing(v, kv)
    tiny = float(jnp.finfo(v.dtype).smallest_normal)
    return lax.cond(_holds(v, tiny) | _holds(kv, tiny), powers, nothing, v, kv)


def raised(x: Any, power: Any) -> Any:
    """x 2^power for `power` >= 0 (broadcast against x), exactly where x is subnormal too:
    x itself where every power is 0 (``jax.lax.cond``); the derivative of a multiplication."""
    jnp, lax = _modules()
    form = _layout(x)
    if form is None:
        return x

    def up(x: Any, power: Any) -> Any:  # a subnormal x is m 2^(1 - bias - width), m integer
        a, sign = _magnitudes(x, form)
        m = a.astype(x.dtype)  # exact where x is subnormal (m < 2^width)
        tiny = _times(jnp.where(sign != 0, -m, m), power + (1 - form.bias - form.width))
        return jnp.where((a >> form.width) == 0, lax.stop_gradient(tiny), _times(x, power))

    return lax.cond(jnp.any(power != 0), up, lambda y, p: y, x, power)


def lowered(x: Any, power: Any, *, exact: bool) -> Any:
    """x 2^-power for `power` >= 0 (broadcast against x): exactly (`ldexp`, subnormal
    results rebuilt from the bits), or, not `exact`, by two multiplications (results below the
    smallest normal number become 0); x itself where every power is 0 (``jax.lax.cond``);
    the derivative of a multiplication."""
    jnp, lax = _modules()
    if _layout(x) is None:
        return x
    down = (lambda y, p: _scaled(y, -p)) if exact else (lambda y, p: _times(y, -p))
    return lax.cond(jnp.any(power != 0), down, lambda y, p: y, x, power)
