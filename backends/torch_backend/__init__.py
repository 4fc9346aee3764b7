"""The PyTorch backends (entry points ``torch`` and ``torch-cuda``): ZeroS on torch tensors.

Its modules, one job each (the way flash-linear-attention keeps the forms of one op side by
side):

``protocol``  `TorchBackend` and `CudaTorchBackend`, the protocol of spec 10 around the chunk
              form (validation, device, chunk and slab sizes, gradients, the layer)
``chunked``   the chunk form of spec 4.2 and 4.3 (`chunked.attention`), its default `Form`
              (`chunked.slabs`), the seam other backends plug their kernels into
              (`Chunks`, `Sums`, `Form`) and its conversions to the state of spec 5.1
``plan``      the chunk plan: which chunk holds which tokens of which sequence (dense and
              packed calls, spec 5.2), and scans that restart with each sequence
``logits``    the default logits, each sequence from its own key sum
``bidirectional``  the whole-sequence form of spec 4.3, one state per sequence
``screen``    non-finite inputs, handled once before any form, and the unit directions
``slab``      one slab of chunks of the default form, every chunk at once (spec 4.2,
              steps 2-6), and the seam's types `Chunks`, `Sums` and `Sequences`
``layer``     `ZeroSAttention`, the layer of spec 13 as an ``nn.Module``

They must equal the reference form, `zeros_ref.attention`, to the tolerance of spec 7.1.
"""

from .layer import ZeroSAttention, from_params, to_params
from .plan import ChunkPlan, chunk_plan
from .protocol import (
    CHUNK_SIZE,
    SLAB_SIZE,
    CudaTorchBackend,
    TorchBackend,
    backend,
    cuda_backend,
)

__all__ = [
    "CHUNK_SIZE",
    "SLAB_SIZE",
    "ChunkPlan",
    "CudaTorchBackend",
    "TorchBackend",
    "ZeroSAttention",
    "backend",
    "chunk_plan",
    "cuda_backend",
    "from_params",
    "to_params",
]
