"""The PyTorch backends (entry points ``torch`` and ``torch-cuda``): ZeroS on torch tensors.

The forms of one computation side by side, each a module:

``protocol``  `TorchBackend`, the protocol of spec 10 around the chunk form (validation, device,
              chunk and slab sizes, gradients, the layer)
``chunked``   the chunk-parallel form of spec 4.2 and 4.3 (`chunked.attention`), with the seam
              other backends plug their kernels into (`Chunks`, `Sums`, `Form`)
``slab``      one slab of chunks of that form, every chunk at once (spec 4.2, steps 2-6)
``layer``     `ZeroSAttention`, the layer of spec 13 as an ``nn.Module``

They must equal the reference form, `zeros_ref.attention`, to the tolerance of spec 7.1.
"""

from .layer import ZeroSAttention, from_params, to_params
from .protocol import CHUNK_SIZE, SLAB_SIZE, TorchBackend, backend, cuda_backend

__all__ = [
    "CHUNK_SIZE",
    "SLAB_SIZE",
    "TorchBackend",
    "ZeroSAttention",
    "backend",
    "cuda_backend",
    "from_params",
    "to_params",
]
