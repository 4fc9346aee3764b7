"""The JAX backend: the array-API chunk form under ``jax.jit`` (entry point ``jax``).

It must equal the reference form, `zeros_ref.attention` (spec 4.2, 4.3), and runs the
array-API chunk form (`zeros_backends.array_api`, whose docstring explains it) compiled by
``jax.jit`` with ``jax.lax.scan`` over its slabs: one compilation per shape and option set
(the chunk plan of a packed call is an argument, so new offsets of the same shape do not
compile again), and a program whose size does not grow with the sequence.

Validation (spec 8) runs eagerly before the compiled form, with the reference's own errors
(`zeros_ref.kernel.check_call`). Half-precision inputs (float16, bfloat16) are computed in
float32 (ZS-DTYPE-HALF). Gradients (ZS-GRAD) are JAX's own: the form is made of
differentiable array operations, and `gradients` takes them with ``jax.vjp``.

float64 needs JAX's x64 mode, which this backend never switches on for the user's own calls:
`dtypes` lists "float64" only while x64 is enabled (``JAX_ENABLE_X64=1``, or
``jax.config.update("jax_enable_x64", True)``, or within ``with jax.enable_x64(True):``).
`gradients`, which the spec defines in float64, enables it for its own computation only
(``jax.enable_x64`` is a context manager, local to the thread).

JAX is imported on first use, so this module (and the entry point) loads without JAX; the
first call then fails with a `RuntimeError` that says how to install it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import zeros_ref
from zeros_ref import kernel

from . import array_api, jax_exact

__all__ = ["CHUNK_SIZE", "COMPILED_KEPT", "SLAB_SIZE", "JaxBackend", "backend"]

CHUNK_SIZE = 64
"""Default chunk length C."""
SLAB_SIZE = 8
"""Default chunks per slab: one step of the compiled scan (8 was about 10% faster than 16 at
N = 8192, float32, on a 2-core CPU; a packed call of 500 sequences takes about 2.7 times a
dense call of as many tokens, ZS-ON-VARLEN)."""
COMPILED_KEPT = 64
"""Compiled variants of the form kept at most (one per bucket of shapes and option set): past
it JAX's caches are cleared (``jax.clear_caches``: the form's variants, and the small programs
of the eager operations around it, which JAX compiles per shape too), and programs compile
again as calls meet them. Each holds its machine code in memory mappings, and a process may
hold only so many (65,530 on Linux by default: the x64 conformance run, which meets
thousands of shapes, could no longer compile)."""
_GATES = ("first", "higher", "zero")


@functools.cache
def _jax() -> Any:
    """The `jax` module, with `zeros_ref.State` registered as a pytree (its arrays are leaves,
    its `length` static), so that compiled functions take and return states."""
    try:
        import jax
    except ImportError as exc:
        raise RuntimeError("the jax backend needs JAX: pip install 'zeros-attention-spec[jax]'"
                           f"; importing jax failed: {exc}") from exc
    jax.tree_util.register_dataclass(
        zeros_ref.State, data_fields=["running_max", "mean_offset", "normaliser", "kv",
                                      "key_sum"], meta_fields=["length"])
    return jax


@functools.cache
def _core() -> Any:
    """`array_api.chunked.attention` on ``jax.numpy``, compiled, with ``jax.lax.scan``."""
    jax = _jax()
    form = functools.partial(array_api.chunked.attention, jax.numpy, scan=jax.lax.scan,
                             exact=jax_exact)
    return jax.jit(form, static_argnames=("causal", "return_state", "gather", "slab"))


def _readable(flag: Any) -> bool:
    """The form's flag read on the host, False while it is traced (inside the caller's own
    ``jax.jit``, where the error of spec 8 cannot be raised)."""
    return not isinstance(flag, _jax().core.Tracer) and bool(flag)


class JaxBackend:
    """ZeroS on JAX arrays (the default device), behind the protocol of spec 10.

    Parameters
    ----------
    chunk_size : int
        Chunk length C (speed only; any C gives the same result).
    slab_size : int
        Chunks computed at once, one step of the compiled scan.
    """

    name = "jax"
    features = frozenset({"bidirectional", "state", "default_logits", "grad", "varlen",
                          "merge", "layer"})
    index_dtypes = ("int32", "int64")
    """Integer dtypes `from_numpy` takes too: those of ``cu_seqlens`` (int64 with x64)."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, slab_size: int = SLAB_SIZE) -> None:
        self.chunk_size = chunk_size
        self.slab_size = slab_size
        self._pending: Any = None
        self._recorded: list[tuple[tuple, dict]] | None = None

    def __repr__(self) -> str:
        return f"JaxBackend(chunk_size={self.chunk_size}, slab_size={self.slab_size})"

    @property
    def dtypes(self) -> tuple[str, ...]:
        """float16, bfloat16 and float32; float64 too while JAX's x64 mode is enabled (never
        where JAX is not installed: the registry lists the backend there too)."""
        try:
            x64 = _jax().config.jax_enable_x64
        except RuntimeError:  # no JAX
            x64 = False
        wide = ("float64",) if x64 else ()
        return ("float16", "bfloat16", "float32", *wide)

    def from_numpy(self, x: np.ndarray, dtype: str) -> Any:
        """`x` as a JAX array of dtype name `dtype` (a floating dtype of `dtypes`, or an
        integer one of `index_dtypes`)."""
        jnp = _jax().numpy
        if dtype not in (*self.dtypes, *self.index_dtypes):
            hint = (" (float64 needs JAX's x64 mode: JAX_ENABLE_X64=1)"
                    if dtype == "float64" else "")
            raise TypeError(f"`dtype` must be one of {self.dtypes}{hint}; got {dtype!r}")
        if dtype == "int64" and not _jax().config.jax_enable_x64:
            dtype = "int32"  # JAX's integers without x64; offsets fit
        return jnp.asarray(np.asarray(x), dtype=getattr(jnp, dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        """A numpy copy of the JAX array `x` (bfloat16 as float32)."""
        x = np.asarray(_jax().device_get(x))
        return x.astype(np.float32) if x.dtype.name == "bfloat16" else x.copy()

    def attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        logits: Any = None,
        first: Any = 1.0,
        higher: Any = 1.0,
        zero: Any = 0.0,
        causal: bool = True,
        state: zeros_ref.State | None = None,
        return_state: bool = False,
        cu_seqlens: Any = None,
    ) -> Any:
        """ZeroS attention on JAX arrays: arguments, result and errors of
        `zeros_ref.attention` (spec sections 2-8, packed sequences 5.2). Differentiable by
        JAX in every array argument; a packed call reads `cu_seqlens` on the host once."""
        inp, start = kernel.check_call(q, k, v, logits=logits, first=first, higher=higher,
                                       zero=zero, causal=causal, state=state,
                                       return_state=return_state, cu_seqlens=cu_seqlens)
        out, end = array_api.attention(inp, start, causal=causal, return_state=return_state,
                                       chunk=self.chunk_size, slab=self.slab_size,
                                       core=self._compiled, bucket=True, check=_readable)
        if not isinstance(out, _jax().core.Tracer):  # not inside the caller's own trace
            self._pending = out
        return (out, end) if return_state else out

    def _compiled(self, *args: Any, **options: Any) -> array_api.chunked.Result:
        """The compiled form (`_core`), its arguments kept while `memory_peak` records."""
        if self._recorded is not None:
            self._recorded.append((args, options))
        core = _core()
        if core._cache_size() >= COMPILED_KEPT:
            _jax().clear_caches()
        return core(*args, **options)

    def memory_peak(self, fn: Callable[[], Any]) -> int:
        """Peak bytes of the calls ``fn()`` makes (ZS-ON-MEMORY), from XLA's buffer assignment
        of each compiled program: its temporaries, arguments and outputs, and once more its
        outputs (the copy this backend returns). Arguments are counted whole, the caller's own
        arrays included, so the figure is an upper bound; the memory of compiling is not
        counted (a cost per shape, not per call)."""
        self._recorded = []
        try:
            result = fn()
            recorded, self._recorded = self._recorded, None
        finally:
            self._recorded = None
        _jax().block_until_ready(result)
        del result
        peak = 0
        for args, options in recorded:
            stats = _core().lower(*args, **options).compile().memory_analysis()
            peak = max(peak, stats.temp_size_in_bytes + stats.argument_size_in_bytes
                       + 2 * stats.output_size_in_bytes)
        return peak

    def merge_states(self, states: Sequence[zeros_ref.State]) -> zeros_ref.State:
        """The state of the concatenation of pieces from their states (spec 5.3): the
        reference's merge on JAX arrays."""
        return zeros_ref.merge_states(states)

    def layer(
        self,
        x: Any,
        params: Mapping[str, Any],
        *,
        heads: int,
        causal: bool = True,
        first_layer: bool = False,
        rope: str | None = "half",
        norm: bool = True,
        state: zeros_ref.LayerState | None = None,
        return_state: bool = False,
        cu_seqlens: Any = None,
    ) -> Any:
        """The ZeroS layer on JAX arrays (spec 13): `zeros_ref.layer` with this backend's
        `attention` as its core."""
        return zeros_ref.layer(x, params, heads=heads, causal=causal, first_layer=first_layer,
                               rope=rope, norm=norm, state=state, return_state=return_state,
                               attention=self.attention, cu_seqlens=cu_seqlens)

    def gradients(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        cotangent: np.ndarray,
        *,
        logits: np.ndarray | None = None,
        first: Any = 1.0,
        higher: Any = 1.0,
        zero: Any = 0.0,
        causal: bool = True,
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(attention(...) * cotangent)`` by ``jax.vjp`` (ZS-GRAD), in
        float64 (x64 enabled for this computation only).

        Parameters
        ----------
        q, k : (*B, N, D) float64 numpy arrays; v : (*B, N, Dv).
        cotangent : (*B', N, Dv) float64, the shape of the output.
        logits, first, higher, zero : numpy arrays (differentiated) or None / floats (not).

        Returns
        -------
        dict mapping each array argument's name to its float64 gradient, of its shape.
        """
        jax = _jax()
        arrays = {"q": q, "k": k, "v": v, "logits": logits, **dict(zip(_GATES, (first, higher,
                                                                                 zero)))}
        names = [name for name, x in arrays.items() if isinstance(x, np.ndarray)]
        with jax.enable_x64(True):
            leaves = [jax.numpy.asarray(arrays[name], dtype=jax.numpy.float64) for name in names]

            def loss_of(*values: Any) -> Any:
                given = {**arrays, **dict(zip(names, values, strict=True))}
                return self.attention(given["q"], given["k"], given["v"], causal=causal,
                                      **{name: given[name] for name in ("logits", *_GATES)})

            out, pull = jax.vjp(loss_of, *leaves)
            grads = pull(jax.numpy.asarray(cotangent, dtype=out.dtype))
            result = {name: np.asarray(grad, dtype=np.float64)
                      for name, grad in zip(names, grads, strict=True)}
        jax.clear_caches()  # a suite's many differentiated shapes (see COMPILED_KEPT)
        return result

    def synchronize(self) -> None:
        """Wait for the last call's result (JAX dispatches asynchronously; for timings)."""
        if self._pending is not None:
            self._pending.block_until_ready()
            self._pending = None


backend = JaxBackend()
"""Entry point ``jax``: arrays on JAX's default device (JAX is imported on first use)."""
