"""`ZeroSAttention`: the ZeroS layer of spec section 13 as a PyTorch module.

Drop it into a transformer where an attention block goes. Its parameters carry the names of
spec table 13.1 in the same layout (``wq`` is (Dm, Dm) applied as ``x @ wq``, not an
``nn.Linear`` weight), so ``state_dict()`` is the parameter mapping of `zeros_ref.layer`:
`to_params` and `from_params` convert both ways. The forward pass is `TorchBackend.layer`:
the reference's glue around the torch backend's core, with autograd, on the device of its
input.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

import zeros_ref
from zeros_backends import context_parallel

from .protocol import TorchBackend

__all__ = ["ZeroSAttention", "from_params", "to_params"]


@cache
def _backend(device: str) -> TorchBackend:
    return TorchBackend(device)


class ZeroSAttention(nn.Module):
    """The ZeroS attention layer (spec 13): x (*B, N, dim) -> (*B, N, dim).

    Parameters
    ----------
    dim : the model width Dm, divisible by `heads`.
    heads : the number of heads H.
    causal, first_layer, rope, norm : as in `zeros_ref.layer`.
    seed : seed of `zeros_ref.random_layer_params` for the initial values; by default drawn
        from torch's generator, so that ``torch.manual_seed`` fixes it.
    dtype, device : of the parameters.

    Examples
    --------
    >>> import torch
    >>> attn = ZeroSAttention(16, 4, seed=0)
    >>> attn(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = True, first_layer: bool = False,
                 rope: str | None = "half", norm: bool = True, seed: int | None = None,
                 dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.options = {"heads": heads, "causal": causal, "first_layer": first_layer,
                        "rope": rope, "norm": norm}
        if seed is None:
            seed = int(torch.randint(2**31 - 1, ()))
        initial = zeros_ref.random_layer_params(dim, heads, seed=seed)
        dtype = dtype or torch.get_default_dtype()
        for name in zeros_ref.PARAMETERS:
            value = torch.tensor(initial[name], dtype=dtype, device=device)
            self.register_parameter(name, nn.Parameter(value))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {"dim": self.dim, **self.options}.items())

    def forward(self, x: torch.Tensor, *, state: zeros_ref.LayerState | None = None,
                return_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                cp_group: Any = None) -> Any:
        """The layer on `x`; with `return_state`, also the `zeros_ref.LayerState` to continue
        from. `cu_seqlens` (S + 1,) packs S sequences along the time axis (spec 5.2,
        ZS-LAYER-VARLEN): RoPE positions, prior means and the core restart at each, and a
        state holds one per sequence. With `cp_group` (a `torch.distributed` process group,
        e.g. ``dist.group.WORLD``) x is this rank's slice of one causal sequence split over
        the group's ranks in order (context parallelism, `context_parallel.layer`)."""
        params = {name: getattr(self, name) for name in zeros_ref.PARAMETERS}
        backend = _backend(str(x.device))
        if cp_group is not None:
            if state is not None or return_state or cu_seqlens is not None:
                raise ValueError("`cp_group` takes no `state`, `return_state` or `cu_seqlens`")
            if not self.options["causal"]:
                raise ValueError("`cp_group` needs a causal layer")
            options = {k: v for k, v in self.options.items() if k != "causal"}
            return context_parallel.layer(x, params, **options, group=cp_group,
                                          backend=backend)
        return backend.layer(x, params, **self.options, state=state,
                             return_state=return_state, cu_seqlens=cu_seqlens)


def to_params(module: ZeroSAttention) -> dict[str, np.ndarray]:
    """The module's parameters as the float64 NumPy mapping of `zeros_ref.layer`."""
    return {name: getattr(module, name).detach().cpu().double().numpy().copy()
            for name in zeros_ref.PARAMETERS}


def from_params(params: Mapping[str, Any], *, heads: int, **options: Any) -> ZeroSAttention:
    """A module holding `params` (the mapping of spec table 13.1, any array library) with the
    options of `ZeroSAttention` (dtype float64 unless given)."""
    missing = [name for name in zeros_ref.PARAMETERS if name not in params]
    extra = sorted(set(params) - set(zeros_ref.PARAMETERS))
    if missing or extra:
        raise ValueError(f"`params` must have exactly the names {list(zeros_ref.PARAMETERS)}; "
                         f"missing {missing}, unknown {extra}")
    dtype = options.pop("dtype", torch.float64)
    dm = int(np.shape(params["wq"])[0])
    module = ZeroSAttention(dm, heads, seed=0, dtype=dtype, **options)
    state = {name: torch.as_tensor(np.asarray(params[name]), dtype=dtype)
             for name in zeros_ref.PARAMETERS}
    module.load_state_dict(state)
    return module
