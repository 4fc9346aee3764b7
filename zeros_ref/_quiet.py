"""NumPy's floating-point warnings, kept out of the reference's internals (spec section 8).

On non-finite input, and on finite input where an intermediate step overflows and the
algorithm handles it (the squared norm of a huge vector in `unit`), NumPy warns with a
`RuntimeWarning` that points at a line of the reference ("invalid value encountered in
divide"). The outputs already say what happened (NaN where spec 8 says so, or an error);
the warning would only name lines the caller did not write. The public functions therefore
run with NumPy's floating-point errors ignored when their arrays compute with NumPy (NumPy
and array-api-strict); other libraries do not warn.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import array_api_compat

__all__ = ["quiet", "quietly"]

F = TypeVar("F", bound=Callable[..., Any])


def quiet(x: Any) -> contextlib.AbstractContextManager:
    """A context without NumPy floating-point warnings where `x` is a NumPy or
    array-api-strict array; a context that does nothing for other arrays and non-arrays."""
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return contextlib.nullcontext()
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(
        xp
    ):
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def quietly(function: F) -> F:
    """`function` run in `quiet` of its first argument (its first array), given by position
    or by keyword."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else next(iter(kwargs.values()), None)
        with quiet(first):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
