"""The layer's parameters: their names and shapes (spec table 13.1), and random ones.

`random_layer_params` is the one helper of the reference that uses NumPy directly: the array
API has no random numbers. It returns float64 NumPy arrays; convert them to any library.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PARAMETERS", "check_heads", "parameter_shapes", "random_layer_params"]

PARAMETERS = ("wq", "bq", "wk", "bk", "wv", "bv", "wu", "bu", "wg", "bg", "mu", "log_tau",
              "wo", "bo")
"""Names of the layer's parameters, in the order of spec table 13.1."""


def check_heads(dm: int, heads: object) -> int:
    """The head width d = Dm / H; `ValueError` naming `heads` unless it is an integer >= 1
    that divides the model width `dm`."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"`heads` must be an integer >= 1; got {heads!r}")
    if dm % heads:
        raise ValueError(f"the model width Dm = {dm} must be divisible by `heads` = {heads}")
    return dm // heads


def parameter_shapes(dm: int, heads: int) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter for model width `dm` = H d and `heads` = H."""
    square = {f"w{c}": (dm, dm) for c in "qkvuo"}
    bias = {f"b{c}": (dm,) for c in "qkvuo"}
    return {**square, **bias, "wg": (dm, 3 * heads), "bg": (3 * heads,),
            "mu": (heads, dm // heads), "log_tau": (heads,)}


def random_layer_params(
    dm: int, heads: int, *, seed: int = 0, logit_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """A valid float64 NumPy parameter dict for `layer`, drawn from ``default_rng(seed)``.

    Weights are normal with variance 1/Dm (so projections keep the scale of x), biases and mu
    normal with standard deviation 0.5, log_tau normal with standard deviation 0.5. The radial
    projection ``wu`` is multiplied by `logit_scale`: the logits scale with its square, so
    `logit_scale` = 10 spreads them over hundreds. Convert with the array library of your
    choice (``torch.asarray``, ``cupy.asarray``...).
    """
    check_heads(dm, heads)
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in parameter_shapes(dm, heads).items():
        if name.startswith("w"):
            params[name] = rng.normal(size=shape) / math.sqrt(dm)
        else:
            params[name] = rng.normal(size=shape) * 0.5
    params["wu"] = params["wu"] * logit_scale
    return {name: params[name] for name in PARAMETERS}
