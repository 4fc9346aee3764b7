"""zeros_ref: the reference implementation of ZeroS (zero-sum linear attention).

Pure array-API code: the array namespace, dtype and device come from the inputs, so the same
functions run on NumPy, array-api-strict, PyTorch, CuPy and JAX arrays. The normative text is
``spec/zeros-spec.md``; section numbers in docstrings refer to it. Backend authors reuse the
validation, the state and the exact chunk step through `zeros_ref.kernel`; the modules whose
names start with an underscore are private.
"""

from . import kernel
from ._attention import DEFAULT_CHUNK_SIZE, attention
from ._layer import LayerState, layer
from ._logits import deviation_logits, mean_logits, quadratic_logits
from ._merge import merge_states
from ._params import PARAMETERS, random_layer_params
from ._rope import rope
from ._state import State
from ._weights import explicit_attention, weights

__version__ = "0.1.0"
SPEC_VERSION = "0.3"

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PARAMETERS",
    "SPEC_VERSION",
    "LayerState",
    "State",
    "__version__",
    "attention",
    "deviation_logits",
    "explicit_attention",
    "kernel",
    "layer",
    "mean_logits",
    "merge_states",
    "quadratic_logits",
    "random_layer_params",
    "rope",
    "weights",
]
