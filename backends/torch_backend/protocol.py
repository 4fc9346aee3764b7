"""The PyTorch backends (entry points ``torch`` and ``torch-cuda``): the protocol of spec 10
around the chunk form.

Validation, the `State` of section 5 and the semantics are the reference's (`zeros_ref.kernel`
and `zeros_ref.layer`); the computation is `chunked`, the chunk form of spec 4.2 and 4.3
arranged for a device: every chunk of a slab at once, no branch on tensor data and no host
sync in the forward or backward pass, a few operations per slab rather than per chunk. What
this module adds:

- the device: tensors live on ``"cpu"`` or ``"cuda"``, and the chunk length C and the chunks
  per slab are chosen for it (`CHUNK_SIZE`, `SLAB_SIZE`; both configurable, neither changes
  the result beyond rounding);
- gradients (ZS-GRAD) through ``torch.autograd``; when they are recorded each slab of at most
  `chunked.SLAB_TRAINING` chunks is checkpointed (recomputed in backward), so that training
  memory stays a small multiple of the inputs' bytes;
- ``torch.compile(fullgraph=True)`` of forward and backward without graph breaks;
- `CudaTorchBackend`: on CUDA, the peak of the caching allocator as the memory measure of
  ZS-ON-MEMORY (`memory_peak`; the process's resident size does not see device memory). The
  CPU backend has no `memory_peak`: the suite measures its resident size;
- `layer`, the whole layer of section 13 with this backend's core (see `layer` for the
  `nn.Module`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import zeros_ref
from zeros_ref import kernel

from . import chunked
from .plan import ChunkPlan, check_plan

__all__ = ["CHUNK_SIZE", "SLAB_SIZE", "CudaTorchBackend", "TorchBackend", "backend",
           "cuda_backend"]

CHUNK_SIZE = {"cpu": zeros_ref.DEFAULT_CHUNK_SIZE, "cuda": 256}
"""Default chunk length C per device type: speed only, any C gives the same result."""
SLAB_SIZE = {"cpu": 16, "cuda": 32}
"""Default chunks per slab (one step of the loop over the sequence) per device type: on the
CPU, few enough tokens that a slab's temporaries stay in the caches; on CUDA, enough for few
launches (still to be tuned on hardware)."""

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_OFFSETS = ("int32", "int64")
"""Integer dtypes `from_numpy` takes too: those of ``cu_seqlens``."""
_GATES = ("first", "higher", "zero")


class TorchBackend:
    """`zeros_ref.attention` on torch tensors of one device, behind the protocol of spec 10.

    Parameters
    ----------
    device : str
        A torch device string, ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` etc.). Constructing a
        CUDA backend never touches the GPU; the first `from_numpy` fails with a clear
        `RuntimeError` where CUDA is not available. `CudaTorchBackend` is the CUDA backend
        of the suite: it adds `memory_peak`, which this class has on no device.
    name : str
        The name in reports; defaults to ``"torch"`` (CPU) or ``"torch-<device>"``.
    chunk_size : int or None
        Chunk length C of the chunked form; None takes `CHUNK_SIZE` of the device type.
    slab_size : int or None
        Chunks computed together; None takes `SLAB_SIZE` of the device type.

    Examples
    --------
    >>> import numpy as np
    >>> b = TorchBackend("cpu")
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 4))
    >>> q, k, v = (b.from_numpy(x, "float32") for _ in range(3))
    >>> b.to_numpy(b.attention(q, k, v)).shape
    (2, 5, 4)
    """

    dtypes = ("float16", "bfloat16", "float32", "float64")
    features = frozenset({"bidirectional", "state", "default_logits", "grad", "layer",
                          "varlen", "merge"})

    def __init__(self, device: str = "cpu", *, name: str | None = None,
                 chunk_size: int | None = None, slab_size: int | None = None) -> None:
        self.device = str(device)
        kind = torch.device(self.device).type
        if kind not in CHUNK_SIZE:
            raise ValueError(f"`device` must be a cpu or cuda device; got {device!r}")
        self.name = name or ("torch" if kind == "cpu" else f"torch-{self.device}")
        self.chunk_size = CHUNK_SIZE[kind] if chunk_size is None else chunk_size
        self.slab_size = SLAB_SIZE[kind] if slab_size is None else slab_size
        self._cuda = kind == "cuda"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.device!r}, name={self.name!r}, "
                f"chunk_size={self.chunk_size}, slab_size={self.slab_size})")

    # -- conversion ---------------------------------------------------------------------------

    def _ready(self) -> None:
        if self._cuda and not torch.cuda.is_available():
            raise RuntimeError(
                f"backend {self.name!r} needs a CUDA device, but torch.cuda.is_available() is "
                f"False (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
            )

    def from_numpy(self, x: np.ndarray, dtype: str) -> torch.Tensor:
        """`x` as a tensor of dtype name `dtype` (a floating dtype of `dtypes`, or int32 or
        int64 for offsets) on the backend's device."""
        self._ready()
        if dtype in _OFFSETS:  # the offsets of a packed call (spec 5.2)
            return torch.from_numpy(np.array(x, dtype=dtype)).to(self.device)
        if dtype not in _DTYPES:
            raise TypeError(f"`dtype` must be one of {(*_DTYPES, *_OFFSETS)}; got {dtype!r}")
        if dtype == "bfloat16":  # numpy has no bfloat16: round in torch, from float64
            tensor = torch.from_numpy(np.array(x, dtype=np.float64)).to(torch.bfloat16)
        else:  # numpy rounds float64 -> float16 once (torch would go through float32)
            tensor = torch.from_numpy(np.array(x, dtype=dtype))
        return tensor.to(self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        """A numpy copy of tensor `x` (bfloat16 becomes float32, which holds it exactly)."""
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy().copy()

    # -- attention ----------------------------------------------------------------------------

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        logits: torch.Tensor | None = None,
        first: Any = 1.0,
        higher: Any = 1.0,
        zero: Any = 0.0,
        causal: bool = True,
        state: zeros_ref.State | None = None,
        return_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        chunk_plan: ChunkPlan | None = None,
    ) -> Any:
        """ZeroS attention on tensors: `zeros_ref.attention` with this device's chunk length.

        Arguments, result and errors are those of `zeros_ref.attention` (spec sections 2-8,
        packed sequences 5.2); the result is differentiable in every tensor argument
        (ZS-GRAD).

        A packed call (`cu_seqlens`) reads the offsets on the host once, to lay its chunks
        out; with `chunk_plan`, made once by `chunk_plan(cu_seqlens, backend.chunk_size)`
        and passed with the same `cu_seqlens` to every call on that batch, it reads nothing
        back from the device (no host sync).
        """
        offsets = None
        if chunk_plan is not None:
            if cu_seqlens is None:
                raise ValueError("`chunk_plan` needs the `cu_seqlens` it was made from")
            check_plan(chunk_plan, cu_seqlens, self.chunk_size)
            offsets = chunk_plan.offsets
        inp, start = kernel.check_call(q, k, v, logits=logits, first=first, higher=higher,
                                       zero=zero, causal=causal, state=state,
                                       return_state=return_state, cu_seqlens=cu_seqlens,
                                       offsets=offsets)
        out, end = chunked.attention(inp, start, causal=causal, chunk=self.chunk_size,
                                     slab_size=self.slab_size, return_state=return_state,
                                     form=self._chunk_form(inp, causal), plan=chunk_plan)
        return (out, end) if return_state else out

    def _chunk_form(self, inp: kernel.Inputs, causal: bool) -> chunked.Form | None:
        """The form that computes this call's causal chunks: None, the default form of
        `chunked` (`chunked.slabs` with this backend's `slab_size`); a subclass with kernels
        of its own returns theirs."""
        return None

    def merge_states(self, states: Sequence[zeros_ref.State]) -> zeros_ref.State:
        """The state of the concatenation of pieces from their states, in sequence order
        (spec 5.3): the reference's merge on the states' tensors, differentiable and on their
        device."""
        return zeros_ref.merge_states(states)

    def layer(
        self,
        x: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        *,
        heads: int,
        causal: bool = True,
        first_layer: bool = False,
        rope: str | None = "half",
        norm: bool = True,
        state: zeros_ref.LayerState | None = None,
        return_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
    ) -> Any:
        """The ZeroS layer on tensors (spec section 13): `zeros_ref.layer` with this backend's
        `attention` as its core. Differentiable in `x` and every parameter. A packed call
        (`cu_seqlens`, ZS-LAYER-VARLEN) runs the layer's glue once per sequence, as
        `zeros_ref.layer` does."""
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
        """Gradients of ``sum(attention(...) * cotangent)`` by ``torch.autograd`` (ZS-GRAD).

        Parameters
        ----------
        q, k : (*B, N, D) float64 numpy arrays; v : (*B, N, Dv).
        cotangent : (*B', N, Dv) float64, the shape of the output.
        logits, first, higher, zero : numpy arrays (differentiated) or None / floats (not).

        Returns
        -------
        dict mapping each array argument's name to its float64 gradient, of its shape.
        """
        arrays = {"q": q, "k": k, "v": v, "logits": logits}
        arrays.update(zip(_GATES, (first, higher, zero)))
        leaves = {
            name: self.from_numpy(value, "float64").requires_grad_(True)
            for name, value in arrays.items()
            if isinstance(value, np.ndarray)
        }
        options = {name: leaves.get(name, arrays[name]) for name in ("logits", *_GATES)}
        out = self.attention(leaves["q"], leaves["k"], leaves["v"], causal=causal, **options)
        loss = torch.sum(out * self.from_numpy(cotangent, "float64"))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {
            name: np.zeros(arrays[name].shape) if grad is None else self.to_numpy(grad)
            for name, grad in zip(leaves, grads)
        }

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timings; a no-op on the CPU)."""
        if self._cuda:
            torch.cuda.synchronize(torch.device(self.device))


class CudaTorchBackend(TorchBackend):
    """`TorchBackend` on a CUDA device, with the device-memory measure of ZS-ON-MEMORY.

    Parameters
    ----------
    device : str
        A CUDA device: ``"cuda"`` (the current one) or ``"cuda:<index>"``. Constructing the
        backend never touches the GPU.
    name, chunk_size, slab_size
        As for `TorchBackend`.

    Examples
    --------
    >>> b = CudaTorchBackend()
    >>> b.name, callable(b.memory_peak)
    ('torch-cuda', True)
    """

    def __init__(self, device: str = "cuda", *, name: str | None = None,
                 chunk_size: int | None = None, slab_size: int | None = None) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"`device` must be a cuda device; got {device!r}")
        super().__init__(device, name=name, chunk_size=chunk_size, slab_size=slab_size)

    def memory_peak(self, fn: Callable[[], Any]) -> int:
        """Peak device bytes allocated while ``fn()`` runs, beyond those allocated before it
        (ZS-ON-MEMORY): the caching allocator's counters, which see what the process's
        resident size does not.

        Parameters
        ----------
        fn : callable
            Called once with no arguments; its result is dropped after the measurement.

        Returns
        -------
        int
            Bytes.
        """
        self._ready()
        device = torch.device(self.device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return peak - before


backend = TorchBackend("cpu")
"""Entry point ``torch``: tensors on the CPU."""

cuda_backend = CudaTorchBackend("cuda")
"""Entry point ``torch-cuda``: tensors on the current CUDA device (constructed lazily)."""
