"""Exact powers of two under XLA's flush of subnormal numbers (`zeros_backends.jax_exact`):
against NumPy's exact arithmetic on bit patterns across the whole range, and the jax
backend's answers for tiny keys and values (ZS-STAB-MAGNITUDE), in float32 and in float64."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed: the jax backend is not tested "
                          "(pip install 'zeros-attention-spec[jax]')")
jnp = jax.numpy

import zeros_ref  # noqa: E402
from zeros_backends import jax_exact  # noqa: E402
from zeros_backends.jax_backend import backend  # noqa: E402

INTS = {"float32": np.uint32, "float64": np.uint64}


def _patterns(dtype: str, size: int, seed: int = 0) -> np.ndarray:
    """Finite numbers of `dtype` from random bit patterns: every exponent equally likely,
    subnormal numbers and zeros included."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, np.iinfo(INTS[dtype]).max, size=size, dtype=INTS[dtype],
                        endpoint=True)
    x = bits.view(dtype)
    x = np.where(np.isfinite(x), x, 0.0).astype(dtype)
    x[:8] = [0.0, -0.0, np.finfo(dtype).smallest_subnormal, np.finfo(dtype).smallest_normal,
             -np.finfo(dtype).smallest_subnormal * 3, np.finfo(dtype).max, 1.0, -1.5]
    return x


def _jax_x64(dtype: str) -> Any:
    return jax.enable_x64(dtype == "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ldexp_is_exact_and_rounds_to_nearest_even(dtype: str) -> None:
    """Every power from -80 to +80 applied to random bit patterns equals NumPy's ldexp, which
    does not flush (subnormal results rounded to nearest, ties to even)."""
    x = _patterns(dtype, 4096)
    rng = np.random.default_rng(1)
    power = rng.integers(-80, 81, size=x.shape).astype(np.int32)
    power[:64] = -2000  # results below the smallest subnormal: zeros of x's sign
    with _jax_x64(dtype):
        got = np.asarray(jax.jit(jax_exact.ldexp)(jnp.asarray(x), jnp.asarray(power)))
    with np.errstate(over="ignore"):
        want = np.ldexp(x, power)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.view(INTS[dtype]), want.view(INTS[dtype]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_peak_exponent_reads_subnormal_entries(dtype: str) -> None:
    x = _patterns(dtype, 4096).reshape(512, 8)
    x[0] = 0.0
    x[1] = np.finfo(dtype).smallest_subnormal * np.arange(8)
    with _jax_x64(dtype):
        got = np.asarray(jax_exact.peak_exponent(jnp.asarray(x), -1))[:, 0]
    _, exponent = np.frexp(np.max(np.abs(x), axis=-1))
    assert got[0] == jax_exact.NONE
    np.testing.assert_array_equal(got[1:], exponent[1:] - 1)


def test_xla_flushes_subnormal_numbers() -> None:
    """Why the module exists: if XLA's CPU code ever keeps subnormal numbers, this fails, and
    the bit work can go."""
    tiny = jnp.float32(1e-38)
    assert float(jax.jit(lambda x: x * 0.01)(tiny)) == 0.0


@pytest.mark.req("ZS-STAB-MAGNITUDE")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_keys_and_values_keep_their_answer(dtype: str) -> None:
    """Keys whose entries are subnormal numbers keep their directions, and values of which
    some rows are subnormal reach outputs that large gates make normal, in the output and in
    the final state (which holds the values' sums)."""
    tiny = np.finfo(dtype).smallest_normal
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(2, 50, 4)) for _ in range(3))
    k[0] *= tiny / 1e3  # every entry of row 0's keys subnormal
    v[1] *= tiny  # row 1's values near the smallest normal number, many entries below
    v[1, ::3] *= 1e-3  # and a third of its value rows well below
    q, k, v, logits = (x.astype(dtype) for x in (q, k, v, rng.normal(size=(2, 50))))
    gates = {"first": 0.75 / tiny, "higher": 0.5 / tiny, "zero": 0.0}
    want, end = zeros_ref.attention(q, k, v, logits=logits, return_state=True, **gates)
    with _jax_x64(dtype):
        got, got_end = backend.attention(*(jnp.asarray(x) for x in (q, k, v)),
                                         logits=jnp.asarray(logits), return_state=True,
                                         **gates)
        got, kv = np.asarray(got), np.asarray(got_end.kv)
    bound = 1e-5 if dtype == "float32" else 1e-12
    for row in range(2):
        scale = np.max(np.abs(want[row]))
        assert np.max(np.abs(got[row] - want[row])) <= bound * scale, row
    assert np.max(np.abs(kv[1] - end.kv[1])) <= bound * np.max(np.abs(end.kv[1]))
    assert np.min(np.abs(kv[1][kv[1] != 0])) < tiny, "the state's sums keep subnormal entries"



def _pieces(x: np.ndarray, spans: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The token spans (start, length) of x (R, N[, D]) packed one after another."""
    return np.concatenate([np.take(x, np.arange(a, a + n), axis=1) for a, n in spans], axis=1)


@pytest.mark.req("ZS-STAB-MAGNITUDE", "ZS-VARLEN-STATE")
def test_tiny_values_continue_from_states_in_packed_calls() -> None:
    """Three packed sequences whose values lie near the smallest normal number (many entries
    below it), continued from their states: the states' sums are lifted with the
    values and moved back after, in both calls."""
    tiny = float(np.finfo(np.float32).smallest_normal)
    rng = np.random.default_rng(4)
    q, k, v = (rng.normal(size=(2, 90, 4)).astype(np.float32) for _ in range(3))
    v *= tiny
    logits = rng.normal(size=(2, 90)).astype(np.float32)
    gates = {"first": np.float32(0.75 / tiny), "higher": np.float32(0.5 / tiny)}
    head, tail = ((0, 20), (30, 30), (70, 10)), ((20, 10), (60, 10), (80, 10))
    first = [_pieces(x, head) for x in (q, k, v, logits)]
    second = [_pieces(x, tail) for x in (q, k, v, logits)]
    cut, rest = np.asarray([0, 20, 50, 60]), np.asarray([0, 10, 20, 30])
    _, mid = zeros_ref.attention(*first[:3], logits=first[3], cu_seqlens=cut,
                                 return_state=True, **gates)
    want = zeros_ref.attention(*second[:3], logits=second[3], cu_seqlens=rest, state=mid,
                               **gates)
    _, jmid = backend.attention(*(jnp.asarray(x) for x in first[:3]),
                                logits=jnp.asarray(first[3]), cu_seqlens=jnp.asarray(cut),
                                return_state=True, **gates)
    got = np.asarray(backend.attention(*(jnp.asarray(x) for x in second[:3]),
                                       logits=jnp.asarray(second[3]),
                                       cu_seqlens=jnp.asarray(rest), state=jmid, **gates))
    for a, b in itertools.pairwise(rest):  # each sequence on its own scale
        error = np.max(np.abs(got[:, a:b] - want[:, a:b]))
        assert error <= 1e-5 * np.max(np.abs(want[:, a:b])), (a, b)
