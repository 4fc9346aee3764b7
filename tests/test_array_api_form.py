"""The array-API chunk form (`zeros_backends.array_api`): equal to the reference on NumPy and
array-api-strict arrays, and traceable by ``jax.jit`` (no branch on array values, so no host
sync on any library)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import zeros_ref
from zeros_backends import array_api
from zeros_backends.array_api import chunked, plan, scans
from zeros_ref import kernel

STATE_FIELDS = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")


def _form(q: Any, k: Any, v: Any, *, chunk: int = 8, slab: int = 3, bucket: bool = False,
          **options: Any) -> Any:
    """`array_api.attention` of a call as `zeros_ref.attention` takes it."""
    call = {"logits": None, "first": 1.0, "higher": 1.0, "zero": 0.0, "causal": True,
            "state": None, "return_state": False, "cu_seqlens": None, **options}
    inp, start = kernel.check_call(q, k, v, **call)
    out, end = array_api.attention(inp, start, causal=call["causal"],
                                   return_state=call["return_state"], chunk=chunk, slab=slab,
                                   bucket=bucket)
    return (out, end) if call["return_state"] else out


def _relative(got: Any, want: Any) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def _offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Offsets of five sequences over n tokens, empty ones and ones cut inside chunks."""
    return np.concatenate([[0], np.sort(rng.integers(0, n + 1, size=3)), [n, n]])


@pytest.mark.req("ZS-ACC-REFERENCE", "ZS-VARLEN-EQUAL")
@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_equals_the_reference_on_numpy(causal: bool, bucket: bool) -> None:
    """Lengths 1 to 100 with chunks of 8 and slabs of 3 (dense and packed, explicit logits far
    from zero and default logits, random gates): outputs and final states as the reference's."""
    rng = np.random.default_rng(1)
    for n, default, packed in itertools.product((1, 8, 37, 100), (True, False), (False, True)):
        q, k = rng.normal(size=(2, n, 4)), rng.normal(size=(2, n, 4))
        v = rng.normal(size=(2, n, 3))
        call = {"logits": None if default else 3 * rng.normal(size=(2, n)) + 50,
                "first": rng.normal(size=(2, n)), "higher": rng.normal(size=(2, n)),
                "zero": rng.normal(size=(2, n)), "causal": causal, "return_state": causal,
                "cu_seqlens": _offsets(rng, n) if packed else None}
        want = zeros_ref.attention(q, k, v, **call)
        got = _form(q, k, v, bucket=bucket, **call)
        if not causal:
            assert _relative(got, want) < 1e-12, (n, default, packed)
            continue
        assert _relative(got[0], want[0]) < 1e-12, (n, default, packed)
        assert got[1].length == want[1].length
        for name in STATE_FIELDS:
            assert _relative(getattr(got[1], name), getattr(want[1], name)) < 1e-12, name


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-VARLEN-STATE")
def test_continues_states_dense_and_packed() -> None:
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 50, 4)), rng.normal(size=(3, 50, 4)), rng.normal(size=(3, 50, 2))
    _, state = zeros_ref.attention(q[:, :20], k[:, :20], v[:, :20], return_state=True)
    got = _form(q[:, 20:], k[:, 20:], v[:, 20:], state=state)
    assert _relative(got, zeros_ref.attention(q, k, v)[:, 20:]) < 1e-12
    offsets = np.array([0, 7, 7, 30, 31])  # a prefill, an empty one, a long one, a decode step
    states = zeros_ref.State.stack(np, [
        zeros_ref.attention(q[:, :j], k[:, :j], v[:, :j], return_state=True)[1]
        for j in (5, 0, 9, 1)])
    call = {"cu_seqlens": offsets, "state": states, "return_state": True}
    want = zeros_ref.attention(q[:, :31], k[:, :31], v[:, :31], **call)
    got = _form(q[:, :31], k[:, :31], v[:, :31], bucket=True, **call)
    assert _relative(got[0], want[0]) < 1e-12
    assert got[1].length == want[1].length == (12, 0, 32, 2)
    for name in STATE_FIELDS:
        assert _relative(getattr(got[1], name), getattr(want[1], name)) < 1e-12, name


@pytest.mark.req("ZS-ERR-NONFINITE", "ZS-STAB-RANGE")
@pytest.mark.parametrize("causal", [True, False])
def test_non_finite_rows_and_shifted_logits(causal: bool) -> None:
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(2, 40, 4)), rng.normal(size=(2, 40, 4)), rng.normal(size=(2, 40, 2))
    for name, index in (("q", (0, 5, 2)), ("k", (0, 13, 1)), ("v", (1, 20, 0))):
        args = {"q": q, "k": k, "v": v}
        args[name] = args[name].copy()
        args[name][index] = np.nan
        want = zeros_ref.attention(**args, causal=causal)
        got = _form(**args, causal=causal)
        reached = np.isnan(want).any(axis=-1)  # rows the reference's NaN reaches
        assert np.array_equal(np.isnan(got).any(axis=-1), reached), name
        assert _relative(got[~reached], want[~reached]) < 1e-12, name
    s = rng.normal(size=(2, 40))
    s[:, 20:] += 1e4
    want = zeros_ref.attention(q, k, v, logits=s, causal=causal)
    assert _relative(_form(q, k, v, logits=s, causal=causal), want) < 1e-12


def test_default_logits_past_the_range_raise_the_reference_error() -> None:
    k = np.full((1, 4, 2), 1e200)
    with pytest.raises(ValueError, match="`k` is too large for the default logits"):
        _form(k, k, k)


@pytest.mark.req("ZS-ACC-REFERENCE")
def test_runs_on_array_api_strict() -> None:
    xp = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(4)
    q, k, v = (rng.normal(size=(2, 70, 4)) for _ in range(3))
    arrays = [xp.asarray(x) for x in (q, k, v)]
    for causal, offsets in itertools.product((True, False), (None, [0, 3, 3, 50, 70])):
        cu = None if offsets is None else xp.asarray(offsets)
        got = _form(*arrays, causal=causal, cu_seqlens=cu, chunk=16, slab=2,
                    bucket=offsets is not None)
        want = zeros_ref.attention(q, k, v, causal=causal,
                                   cu_seqlens=None if offsets is None else np.asarray(offsets))
        assert _relative(np.asarray(got), want) < 1e-12


@pytest.mark.parametrize("causal,default,state,gather", [
    (True, True, False, False), (True, False, True, True), (False, True, False, True),
    (False, False, False, False)])
def test_jax_jit_traces_the_form(causal: bool, default: bool, state: bool,
                                 gather: bool) -> None:
    """``jax.jit`` traces every path of the form with abstract arrays: a Python branch on an
    array value would raise (TracerBoolConversionError), so the form syncs with no host."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rows, n, d, dv, chunk, slab = 2, 45, 4, 3, 8, 2
    lengths = (20, 0, 25) if gather else (n,)
    layout = plan.chunk_plan(lengths, chunk, slab, jnp)
    count = len(lengths)
    empty = zeros_ref.State.empty(jnp, (count, rows), d, dv, dtype=jnp.float32, device=None)
    start = zeros_ref.State(length=0, running_max=empty.running_max,
                            mean_offset=empty.mean_offset, normaliser=empty.normaliser + 1,
                            kv=empty.kv, key_sum=empty.key_sum)
    q = jax.ShapeDtypeStruct((rows, n, d), jnp.float32)
    vs = jax.ShapeDtypeStruct((rows, n, dv), jnp.float32)
    gate = jax.ShapeDtypeStruct((rows, n), jnp.float32)

    def form(q: Any, k: Any, v: Any, s: Any, g: Any, layout: Any) -> Any:
        result = chunked.attention(jnp, q, k, v, None if default else s, (g, g, g),
                                   start, jnp.asarray([3] * count), layout, causal=causal,
                                   return_state=state, gather=gather,
                                   slab=slab, scan=jax.lax.scan)
        return result.out, result.overflow

    traced = jax.jit(form).trace(q, q, vs, gate, gate, layout)
    out, overflow = traced.out_info
    assert (out.shape, overflow.shape) == ((rows, n, dv), ())


def test_python_loop_and_lax_scan_agree() -> None:
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(5)
    xs = (rng.normal(size=(6, 2, 3)), rng.normal(size=(6, 2)))

    def step(carry: Any, x: tuple[Any, Any]) -> tuple[Any, Any]:
        carry = carry * 0.5 + x[0].sum(axis=-1) + x[1]
        return carry, (carry, None)

    looped = scans.loop(np)(step, np.zeros(2), xs)
    lax = jax.lax.scan(step, jax.numpy.zeros(2), tuple(jax.numpy.asarray(x) for x in xs))
    np.testing.assert_allclose(looped[0], lax[0], rtol=1e-6)
    np.testing.assert_allclose(looped[1][0], lax[1][0], rtol=1e-6)


def test_segmented_scan_and_cumulative_max() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(11, 3))
    start = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    seen = scans.segmented_scan(np, x, start, np.maximum)
    bounds = [*np.flatnonzero(start), 11]
    for a, b in itertools.pairwise(bounds):
        np.testing.assert_array_equal(seen[a:b], np.maximum.accumulate(x[a:b]))
        inclusive = scans.segmented_scan(np, x, start, np.add)
        np.testing.assert_allclose(scans.exclusive(np, inclusive, start)[a:b],
                                   np.cumsum(x[a:b], axis=0) - x[a:b], atol=1e-12)
    np.testing.assert_array_equal(scans.cumulative_max(np, x.T), np.maximum.accumulate(x.T, 1))


def test_bucket_sizes() -> None:
    assert [array_api.bucket_size(n) for n in (1, 3, 8, 9, 16, 17, 100, 128, 129)] == \
        [1, 4, 8, 16, 16, 18, 104, 128, 144]
    for n in range(1, 5000):
        size = array_api.bucket_size(n)
        assert n <= size <= (1.125 * n if n > 16 else 2 * n)
    assert len({array_api.bucket_size(n) for n in range(1025, 2049)}) == 8


def test_plan_pads_chunks_to_whole_slabs() -> None:
    layout = plan.chunk_plan((3, 0, 70), 64, 4, chunks=8, tokens=200)
    assert layout.segment.tolist() == [0, 2, 2, 2, 2, 2, 2, 2]
    assert layout.start.tolist() == [True, True] + [False] * 6
    assert layout.valid.sum() == 73 and layout.place.shape == (200,)
    assert layout.tail.tolist() == [0, 0, 2] and layout.filled.tolist() == [True, False, True]


def test_form_keeps_to_array_api_calls() -> None:
    """The form's modules import no array library: they work through the namespace given."""
    import ast
    import inspect

    for module in (chunked, plan, scans, array_api.slab, array_api.screen):
        tree = ast.parse(inspect.getsource(module))
        names = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert not names & {"torch", "jax", "cupy"}, module.__name__
        if module is not plan:  # the plan is made on the host with NumPy
            assert "numpy" not in names, module.__name__

