"""The CuPy backend (entry point ``cupy``): it loads anywhere, and conforms where CuPy and a GPU
are present."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from zeros_backends import cupy_backend
from zeros_conformance import cli, registry


def _gpu() -> str:
    """Why the GPU tests cannot run here, or "" when they can."""
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install 'zeros-attention-spec[cupy]')"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "cupy finds no CUDA device"
    except Exception as exc:  # no driver, no device: CuPy raises its own runtime errors
        return f"cupy finds no usable CUDA device: {exc}"
    return ""


NO_GPU = _gpu()
needs_gpu = pytest.mark.skipif(bool(NO_GPU), reason=NO_GPU)


def test_entry_point_loads_without_importing_cupy() -> None:
    """The module and the registered entry point load on any machine; CuPy is imported on
    first use only."""
    loaded = "cupy" in sys.modules
    b = registry.load("cupy")
    assert b is cupy_backend.backend
    assert (b.name, b.dtypes, b.device) == ("cupy", ("float16", "float32", "float64"), "cuda")
    assert b.features == frozenset({"bidirectional", "state", "default_logits", "varlen",
                                    "merge"})
    assert callable(b.memory_peak)
    assert ("cupy" in sys.modules) == loaded


def test_attention_is_the_array_api_form_without_a_chunk_loop(monkeypatch) -> None:
    """The backend's `attention` is the array-API chunk form on whatever arrays it is given
    (here NumPy's, which need no GPU): the reference's chunk step, the old per-chunk loop, is
    never called, and the result is the reference's."""
    import zeros_ref
    from zeros_ref import _chunked

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference's chunk loop ran")

    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 300, 8)) for _ in range(3))
    want, want_state = zeros_ref.attention(q, k, v, return_state=True)
    monkeypatch.setattr(_chunked, "causal_step", forbidden)
    monkeypatch.setattr(_chunked, "run", forbidden)
    out, state = cupy_backend.backend.attention(q, k, v, return_state=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(state.kv, want_state.kv, rtol=0, atol=1e-10)


@pytest.mark.skipif(not NO_GPU, reason="CuPy and a GPU are present")
def test_without_a_gpu_from_numpy_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="cupy"):
        cupy_backend.backend.from_numpy(np.zeros((2, 3)), "float32")


@needs_gpu
@pytest.mark.req("ZS-API-PROTOCOL")
def test_conformance_suite() -> None:
    assert cli.main(["run", "--backend", "cupy", "--quick"]) == 0


@needs_gpu
@pytest.mark.req("ZS-DTYPE-OUTPUT")
def test_output_is_a_cupy_array_of_the_input_dtype() -> None:
    import cupy

    b = cupy_backend.backend
    x = np.random.default_rng(0).normal(size=(2, 300, 8))
    for dtype in b.dtypes:
        q = b.from_numpy(x, dtype)
        out, state = b.attention(q, q, q, return_state=True)
        assert isinstance(out, cupy.ndarray)
        assert (out.dtype, out.shape) == (q.dtype, (2, 300, 8))
        assert state.kv.dtype == (cupy.float32 if dtype == "float16" else q.dtype)


@needs_gpu
@pytest.mark.req("ZS-ON-MEMORY")
def test_memory_peak_counts_the_pool() -> None:
    b = cupy_backend.backend
    n = 4096
    x = b.from_numpy(np.ones((2, n, 32)), "float32")
    peak = b.memory_peak(lambda: b.attention(x, x, x))
    assert 2 * n * 32 * 4 <= peak < 64 * 2 * n * 32 * 4  # at least the output, O(N) at most
