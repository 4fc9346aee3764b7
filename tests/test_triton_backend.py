"""The Triton backend (entry point ``triton``): its kernels against the float64 reference and
the torch form on awkward shapes, wide logits, carried state and every tile layout, its
gradients, and the conformance suite.

Without a CUDA device the kernels run in Triton's interpreter on CPU tensors: this module
sets ``TRITON_INTERPRET=1`` before the kernels are defined, so CI (which installs Triton but
has no GPU) runs every test here. The interpreter is slow (about 0.3 s per 1,000 tokens at
D = 32), so the cases are small.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the triton backend is "
                            "not tested (pip install 'zeros-attention-spec[triton]')")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: the triton backend is not tested (pip install "
                "'zeros-attention-spec[triton]')", allow_module_level=True)
CUDA = torch.cuda.is_available()
# Without CUDA the kernels run in the interpreter: TRITON_INTERPRET=1 must be set before
# `chunk` is imported and stay set (Triton reads it again when a kernel first runs).
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import Case, assert_close, definition_scale, draw_case, stream  # noqa: E402

import zeros_ref  # noqa: E402
from zeros_backends.torch_backend import TorchBackend, chunked  # noqa: E402
from zeros_backends.triton_backend import (  # noqa: E402
    CHUNK_SIZE,
    CudaTritonBackend,
    TritonBackend,
    chunk,
)
from zeros_conformance import TOLERANCE, registry  # noqa: E402
from zeros_conformance.requirements import load_requirements  # noqa: E402
from zeros_ref import kernel  # noqa: E402

GATES = ("first", "higher", "zero")
HALF_AND_SINGLE = ("float16", "bfloat16", "float32")
backend = TritonBackend()
"""The backend of the tests: GPU tiles on CUDA, else the interpreter (chunk C = 64 both)."""
small_chunks = TritonBackend(chunk_size=16)
"""The same with C = 16: many chunks in few tokens."""
ENTRY_POINT = registry.load("triton")


def tensors(b: TritonBackend, case: Case, dtype: str) -> tuple[tuple, dict[str, Any]]:
    """The case's arrays as tensors of `dtype` on the backend's device: (q, k, v), options."""
    q, k, v = (b.from_numpy(x, dtype) for x in (case.q, case.k, case.v))
    options = {name: x if x is None or isinstance(x, float) else b.from_numpy(x, dtype)
               for name, x in case.kwargs.items()}
    return (q, k, v), options


def reference_check(b: TritonBackend, out: Any, case: Case, dtype: str, what: str) -> None:
    """`out` agrees with the float64 causal reference on the inputs rounded to `dtype`, within
    the spec 7.1 tolerance of `dtype`."""
    seen = case.map(lambda x: b.to_numpy(b.from_numpy(x, dtype)).astype(np.float64))
    ref = zeros_ref.attention(seen.q, seen.k, seen.v, **seen.kwargs)
    s = seen.logits if seen.logits is not None else zeros_ref.deviation_logits(seen.k)
    assert_close(b.to_numpy(out), ref, definition_scale(seen, causal=True, logits=s),
                 TOLERANCE[dtype], what)


# -- protocol and device ------------------------------------------------------------------------


@pytest.mark.req("ZS-API-PROTOCOL")
def test_protocol_and_entry_point() -> None:
    assert (backend.name, backend.chunk_size, CHUNK_SIZE) == ("triton", 64, 64)
    assert backend.device == ("cuda" if CUDA else "cpu")
    assert backend.dtypes == ("float16", "bfloat16", "float32", "float64")
    assert backend.features == frozenset({"bidirectional", "state", "default_logits", "grad",
                                          "layer", "varlen", "merge"})
    assert isinstance(ENTRY_POINT, TritonBackend) and ENTRY_POINT.name == "triton"
    assert ENTRY_POINT.device == backend.device
    # Device memory is the allocator's on CUDA (ZS-ON-MEMORY); the interpreter's CPU tensors
    # are the process's resident size, which the suite measures itself.
    assert hasattr(ENTRY_POINT, "memory_peak") == CUDA
    assert callable(CudaTritonBackend().memory_peak)
    assert not hasattr(TritonBackend("cpu"), "memory_peak")


@pytest.mark.skipif(CUDA, reason="CUDA is available here")
def test_without_interpreter_or_cuda_fails_clearly() -> None:
    """Constructing works anywhere; the first use says what is missing."""
    b = TritonBackend("cuda")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        b.from_numpy(np.zeros((2, 3)), "float32")


def test_rejects_bad_chunk_sizes() -> None:
    for bad in (0, 8, 48, 64.0):
        with pytest.raises(ValueError, match="chunk_size"):
            TritonBackend(chunk_size=bad)


# -- agreement with the reference ---------------------------------------------------------------


@pytest.mark.req("ZS-ACC-REFERENCE", "ZS-DTYPE-OUTPUT", "ZS-LOG-DEFAULT", "ZS-DTYPE-HALF")
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE)
@pytest.mark.parametrize("logits", ["explicit", "default"])
def test_agrees_with_reference_in_every_dtype(dtype: str, logits: str,
                                              rng: np.random.Generator) -> None:
    """N = 150 over three chunks of 64 (the last partial), broadcast leading axes (2, 3),
    Dv != D, random per-step gates."""
    case = draw_case(rng, 150, d=6, dv=5, batch=(2, 3), explicit_logits=logits == "explicit")
    (q, k, v), options = tensors(backend, case, dtype)
    out = backend.attention(q, k, v, **options)
    assert (out.dtype, out.device, tuple(out.shape)) == (q.dtype, q.device, (2, 3, 150, 5))
    reference_check(backend, out, case, dtype, f"{dtype} logits={logits}")


@pytest.mark.req("ZS-ACC-REFERENCE")
@pytest.mark.parametrize(("d", "dv", "n", "batch"), [(16, 16, 45, (3,)), (64, 64, 40, (2,)),
                                                     (128, 128, 33, ()), (64, 100, 37, ()),
                                                     (100, 24, 50, (2,))])
@pytest.mark.parametrize("gates", ["random", "default"])
def test_agrees_with_reference_on_feature_sizes(d: int, dv: int, n: int, batch: tuple,
                                                gates: str, rng: np.random.Generator) -> None:
    """D = Dv in {16, 64, 128} and D != Dv, not multiples of 16, over chunks of 16."""
    case = draw_case(rng, n, d=d, dv=dv, batch=batch, gates=gates)
    (q, k, v), options = tensors(small_chunks, case, "float32")
    out = small_chunks.attention(q, k, v, **options)
    reference_check(small_chunks, out, case, "float32", f"D={d} Dv={dv} N={n}")


@pytest.mark.req("ZS-STAB-RANGE", "ZS-STAB-OFFSET")
@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_logits_spanning_1e4(offset: float, rng: np.random.Generator) -> None:
    """Logits spread over 1e4 (and moved 1e4 away from zero): finite, within the float32
    tolerance, and no floating-point warning from the kernels (every exponent <= 0, padding
    included)."""
    case = draw_case(rng, 90, d=8, dv=4, batch=(2,))
    case.logits = rng.uniform(-5e3, 5e3, size=(2, 90)) + offset
    case.logits[:, ::7] = case.logits.max() + rng.uniform(0, 1, size=(2, 13))  # new maxima
    (q, k, v), options = tensors(small_chunks, case, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = small_chunks.attention(q, k, v, **options)
    assert torch.isfinite(out).all()
    reference_check(small_chunks, out, case, "float32", f"span 1e4, offset {offset}")


# -- the kernels against the torch form, and their tiles ------------------------------------


def _chunked(form: Any, case: Case, state: kernel.State | None, chunk_size: int) -> tuple:
    """`chunked.attention` of float32 `case` (and a state) with `form`."""
    q, k, v = (backend.from_numpy(x, "float32") for x in (case.q, case.k, case.v))
    options = {name: x if isinstance(x, float) or x is None else backend.from_numpy(x, "float32")
               for name, x in case.kwargs.items()}
    inp, start = kernel.check_call(q, k, v, causal=True, state=state, return_state=True,
                                   **{"logits": None, **options})
    return chunked.attention(inp, start, causal=True, chunk=chunk_size,
                                   return_state=True, form=form)


@pytest.mark.parametrize("tiles", [None, (16, 16), (32, 16)], ids=["whole", "16x16", "32x16"])
def test_kernels_equal_the_torch_form(tiles: tuple | None, rng: np.random.Generator) -> None:
    """Outputs and the state after a call that starts from a state, with the interpreter's
    whole-D tiles and with the GPU's tiling of D and Dv (several tiles, masked edges)."""
    config = None if tiles is None else chunk.Config(*tiles)

    def form(c: chunked.Chunks, s: chunked.Sums) -> tuple:
        return chunk.forward(c, s, config)

    prefix, case = draw_case(rng, 40, d=40, dv=24), draw_case(rng, 75, d=40, dv=24)
    _, state = _chunked(None, prefix, None, 16)
    want, want_state = _chunked(None, case, state, 16)
    got, got_state = _chunked(form, case, state, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_state.kv, want_state.kv, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_state.normaliser, want_state.normaliser)


@pytest.mark.parametrize(("dtype", "precision"), [("float32", "ieee"), ("float16", "tf32"),
                                                  ("bfloat16", "tf32")])
def test_products_are_ieee_for_float32_and_tf32_for_half(dtype: str, precision: str,
                                                         monkeypatch) -> None:
    """The precision of the kernels' products on a GPU (the interpreter ignores it): IEEE
    float32 where the float32 tolerance needs it, TF32 (tensor cores) for half inputs."""
    seen = []
    run = chunk.forward

    def recording(*args: Any, **options: Any) -> Any:
        seen.append(options["precision"])
        return run(*args, **options)

    monkeypatch.setattr(chunk, "forward", recording)
    x = backend.from_numpy(np.ones((2, 20, 4)), dtype)
    backend.attention(x, x, x)
    backend.attention(x.requires_grad_(True), x, x).sum().backward()
    assert seen == [precision, precision]
    with pytest.raises(ValueError, match="precision"):
        run(*([None] * 2), precision="tf32x3")


def test_float64_runs_on_the_torch_path(rng: np.random.Generator, monkeypatch) -> None:
    """float64 never reaches the float32 kernels, and keeps the float64 tolerance."""
    def refuse(*args: Any, **options: Any) -> None:
        raise AssertionError("the kernels ran on float64 inputs")

    monkeypatch.setattr(chunk, "forward", refuse)
    case = draw_case(rng, 70, d=5, dv=3, batch=(2,))
    (q, k, v), options = tensors(backend, case, "float64")
    reference_check(backend, backend.attention(q, k, v, **options), case, "float64",
                    "float64")
    with pytest.raises(AssertionError, match="float64"):
        backend.attention(q.float(), k.float(), v.float())


# -- streaming ----------------------------------------------------------------------------------


@pytest.mark.req("ZS-STREAM-PIECES", "ZS-STREAM-DECODE")
@pytest.mark.parametrize(("dtype", "logits"), [("float32", "explicit"), ("float32", "default"),
                                               ("bfloat16", "default")])
def test_streaming_pieces_equal_one_call(dtype: str, logits: str,
                                         rng: np.random.Generator) -> None:
    """Pieces of uneven lengths (empty, chunk-crossing, decode steps) with the carried state."""
    n = 100
    case = draw_case(rng, n, d=5, dv=4, batch=(2,), explicit_logits=logits == "explicit")
    (q, k, v), options = tensors(small_chunks, case, dtype)
    bounds = [0, 0, 23, 23, 70, 71, 72, 73, n]
    pieces, state = stream(small_chunks.attention, q, k, v, options, bounds)
    assert state.length == n
    reference_check(small_chunks, torch.cat(pieces, dim=-2), case, dtype,
                    f"{dtype} streamed, logits={logits}")


# -- gradients ----------------------------------------------------------------------------------


@pytest.mark.req("ZS-GRAD")
@pytest.mark.parametrize("logits", ["explicit", "default"])
def test_float32_gradients_equal_the_torch_backend(logits: str,
                                                   rng: np.random.Generator) -> None:
    """Gradients of a loss on the outputs and the returned state (through the sums the
    kernels return), for every tensor argument, against the torch backend in float32."""
    case = draw_case(rng, 50, d=6, dv=4, batch=(2,), explicit_logits=logits == "explicit")
    cot = torch.from_numpy(rng.normal(size=(2, 50, 4))).float()

    def gradients(b: TorchBackend) -> dict[str, torch.Tensor]:
        arrays = {"q": case.q, "k": case.k, "v": case.v, **case.kwargs}
        leaves = {name: torch.from_numpy(np.array(x)).float().requires_grad_(True)
                  for name, x in arrays.items() if isinstance(x, np.ndarray)}
        options = {name: leaves[name] for name in ("logits", *GATES) if name in leaves}
        out, state = b.attention(leaves["q"], leaves["k"], leaves["v"], return_state=True,
                                 **options)
        loss = torch.sum(out * cot) + state.kv.sum() + state.normaliser.sum()
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    got = gradients(small_chunks)
    want = gradients(TorchBackend("cpu", chunk_size=16))
    assert set(got) == {"q", "k", "v", *(["logits"] if logits == "explicit" else []), *GATES}
    for name, grad in got.items():
        scale = want[name].abs().max()
        torch.testing.assert_close(grad / scale, want[name] / scale, rtol=0, atol=1e-5,
                                   msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.req("ZS-GRAD")
def test_backward_recomputes_with_the_backends_slab_size(monkeypatch) -> None:
    """The backward pass recomputes the chunks with the torch form's `slabs` and this
    backend's `slab_size`."""
    sizes = []
    run = chunked.slabs

    def recording(chunks: chunked.Chunks, sums: chunked.Sums, **options: Any) -> Any:
        sizes.append(options["slab_size"])
        return run(chunks, sums, **options)

    monkeypatch.setattr(chunked, "slabs", recording)
    b = TritonBackend(chunk_size=16, slab_size=3)
    x = b.from_numpy(np.ones((2, 40, 4)), "float32").requires_grad_(True)
    b.attention(x, x, x).sum().backward()
    assert sizes == [3] and x.grad is not None


# -- the conformance suite ----------------------------------------------------------------------


@pytest.mark.req("ZS-API-PROTOCOL")
@pytest.mark.parametrize("profile", [
    ["--quick"], pytest.param([], marks=pytest.mark.slow, id="full")], ids=["quick", "full"])
def test_conformance_suite(profile: list[str]) -> None:
    """``zeros-conformance run --backend triton`` in a fresh process (the interpreter needs
    ``TRITON_INTERPRET=1`` there before Triton is imported). Under the interpreter the quick
    profile leaves out the complexity requirements (ZS-ON-*), which would time the
    interpreter rather than the kernels (about 100 s on two cores; the whole quick profile
    takes some 180 s), and the full one takes about 350 s (``-m slow``); on CUDA both run
    whole."""
    env = dict(os.environ)
    only: list[str] = []
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
        if profile:
            for req in load_requirements():
                if not req.id.startswith("ZS-ON-"):
                    only += ["--only", req.id]
    done = subprocess.run([sys.executable, "-m", "zeros_conformance.cli", "run", "--backend",
                           "triton", *profile, *only], capture_output=True, text=True,
                          env=env, timeout=1200)
    assert done.returncode == 0 and "CONFORMS" in done.stdout, done.stdout + done.stderr[-3000:]


_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from zeros_backends.triton_backend import CHUNK_SIZE, chunk

assert not chunk.INTERPRETED
arch, d, dv = (int(x) for x in sys.argv[1:4])
config = chunk.Config.for_device(d, dv, interpreted=False)
blocks = {chunk._state_kernel: config.block_d, chunk._output_kernel: chunk._width(d)}
for kernel, block_d in blocks.items():
    consts = {"D": d, "DV": dv, "C": CHUNK_SIZE, "BD": block_d, "BV": config.block_v,
              "PRECISION": sys.argv[4]}
    names = kernel.arg_names
    signature = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else "i32"
                 for n in names}
    source = ASTSource(kernel, signature, {(names.index(n),): x for n, x in consts.items()})
    triton.compile(source, target=GPUTarget("cuda", arch, 32),
                   options={"num_warps": config.warps})
"""


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "d", "dv", "precision"), [
    (90, 64, 64, "ieee"), (80, 128, 128, "tf32"), (90, 100, 24, "tf32")])
def test_kernels_compile_for_a_gpu(arch: int, d: int, dv: int, precision: str) -> None:
    """Both kernels compile to a cubin for sm_80 / sm_90 with the GPU tiles (no GPU needed:
    Triton ships ptxas); the interpreter cannot catch a kernel that does not compile. About
    15 s per case, so only with ``-m slow``."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", _COMPILE, str(arch), str(d), str(dv),
                           precision],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
