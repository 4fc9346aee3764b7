"""The JAX backend (entry point ``jax``): the array-API form under ``jax.jit``, inside a
caller's own ``jax.jit`` and ``jax.grad``, its compilations, x64 left as the user set it, and
the conformance suite."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed: the jax backend is not tested "
                          "(pip install 'zeros-attention-spec[jax]')")
jnp = jax.numpy

import zeros_ref  # noqa: E402
from zeros_backends import jax_backend  # noqa: E402
from zeros_backends.jax_backend import backend  # noqa: E402
from zeros_conformance import cli, registry  # noqa: E402


def _inputs(n: int, rows: int = 2, d: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(rows, n, d)) for _ in range(3))


def _relative(got: Any, want: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want)) / np.max(np.abs(want)))


def test_entry_point_loads_without_importing_jax() -> None:
    assert registry.load("jax") is backend
    code = ("import sys, zeros_backends.jax_backend as m; m.JaxBackend(); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_float64_only_with_x64_and_the_users_setting_is_kept() -> None:
    """float64 is claimed while x64 is on; `gradients` (float64 by the spec) turns it on for
    its own computation only."""
    assert not jax.config.jax_enable_x64, "the tests run with JAX's default (x64 off)"
    assert "float64" not in backend.dtypes
    with pytest.raises(TypeError, match="JAX_ENABLE_X64"):
        backend.from_numpy(np.zeros(3), "float64")
    q, k, v = _inputs(5)
    grads = backend.gradients(q, k, v, np.ones((2, 5, 8)))
    assert grads["q"].dtype == np.float64
    assert not jax.config.jax_enable_x64
    with jax.enable_x64(True):
        assert "float64" in backend.dtypes
        x = backend.from_numpy(q, "float64")
        assert backend.attention(x, x, x).dtype == jnp.float64


@pytest.mark.req("ZS-DTYPE-OUTPUT", "ZS-DTYPE-HALF")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_outputs_and_states_in_every_dtype(dtype: str) -> None:
    q, k, v = _inputs(70)
    x = [backend.from_numpy(a, dtype) for a in (q, k, v)]
    out, state = backend.attention(*x, return_state=True)
    assert (out.dtype, out.shape) == (x[0].dtype, (2, 70, 8))
    assert state.kv.dtype == jnp.float32 and state.length == 70
    rounded = [backend.to_numpy(a).astype(np.float64) for a in x]
    assert _relative(out, zeros_ref.attention(*rounded)) < (1e-5 if dtype == "float32" else 2e-2)


def test_compiles_once_per_bucket() -> None:
    """Lengths of one bucket, and packed batches of one shape with other offsets, reuse one
    compiled program."""
    core = jax_backend._core()
    core.clear_cache()  # so that COMPILED_KEPT is not reached within the test
    q, k, v = (backend.from_numpy(a, "float32") for a in _inputs(300, seed=1))
    backend.attention(q[:, :290], k[:, :290], v[:, :290])
    before = core._cache_size()
    for n in (291, 300):
        backend.attention(q[:, :n], k[:, :n], v[:, :n])
    for offsets in ([0, 100, 250, 300], [0, 70, 240, 300]):  # 2 + 3 + 1 chunks each
        backend.attention(q, k, v, cu_seqlens=backend.from_numpy(np.array(offsets), "int32"))
    assert core._cache_size() - before == 1  # the first packed call only


def test_keeps_a_bounded_number_of_compiled_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past COMPILED_KEPT variants the compiled programs are dropped (each holds memory
    mappings, of which a process has a bounded number), and calls still answer."""
    monkeypatch.setattr(jax_backend, "COMPILED_KEPT", 2)
    core = jax_backend._core()
    q, k, v = _inputs(300, seed=2)
    for n in (40, 100, 150, 300):  # 1, 2, 3 and 5 chunks of 64: four buckets
        got = backend.attention(*(backend.from_numpy(x[:, :n], "float32") for x in (q, k, v)))
        assert core._cache_size() <= 2
        assert _relative(got, zeros_ref.attention(q[:, :n], k[:, :n], v[:, :n])) < 1e-5


@pytest.mark.req("ZS-GRAD")
def test_inside_the_callers_jit_and_grad() -> None:
    """A model jits and differentiates its whole step: the backend's attention works inside
    ``jax.jit`` (default logits, packed batches with concrete offsets, decode from a state)
    and under ``jax.grad``."""
    q, k, v = (backend.from_numpy(a, "float32") for a in _inputs(100, seed=2))
    want = backend.attention(q, k, v)
    np.testing.assert_allclose(jax.jit(backend.attention)(q, k, v), want, rtol=1e-5, atol=1e-6)
    offsets = backend.from_numpy(np.array([0, 10, 10, 100]), "int32")
    packed = jax.jit(lambda q, k, v: backend.attention(q, k, v, cu_seqlens=offsets))(q, k, v)
    np.testing.assert_allclose(packed, backend.attention(q, k, v, cu_seqlens=offsets),
                               rtol=1e-5, atol=1e-6)

    def loss(q: Any) -> Any:
        return jnp.sum(backend.attention(q, k, v) * v)

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(q), jax.grad(loss)(q), rtol=1e-4,
                               atol=1e-6)
    _, state = backend.attention(q[:, :99], k[:, :99], v[:, :99], return_state=True)
    step = jax.jit(lambda s, q, k, v: backend.attention(q, k, v, state=s, return_state=True))
    out, after = step(state, q[:, 99:], k[:, 99:], v[:, 99:])
    np.testing.assert_allclose(out, want[:, 99:], rtol=1e-4, atol=1e-6)
    assert after.length == 100


@pytest.mark.req("ZS-ON-MEMORY")
def test_memory_peak_is_linear_and_counts_the_output() -> None:
    peaks = []
    for n in (1024, 8192):
        x = backend.from_numpy(np.ones((2, n, 32)), "float32")
        peaks.append(backend.memory_peak(lambda x=x: backend.attention(x, x, x)))
        assert peaks[-1] >= 2 * n * 32 * 4  # at least the output
    assert peaks[1] < 10 * peaks[0]


@pytest.mark.slow  # minutes: it compiles once per bucket of shapes; .ci/run runs the full profile
@pytest.mark.req("ZS-API-PROTOCOL")
def test_conformance_suite_quick_with_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick profile with x64 on (float64 claimed): in this process for the checks run
    here, through the environment for those run in a child process."""
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    with jax.enable_x64(True):
        assert cli.main(["run", "--backend", "jax", "--quick"]) == 0
