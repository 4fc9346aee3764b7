"""Fixtures and helpers shared by the tests of the reference `zeros_ref`.

- `xp`: the array namespace of each supported library (numpy, array-api-strict, torch CPU, and
  JAX when it is installed; it is not part of the `test` extra),
  obtained through `array_api_compat` exactly as `zeros_ref` obtains it from its inputs.
- `rng`: a NumPy generator with a fixed seed per test, derived from the test id and `SEED`
  (environment variable ``ZEROS_TEST_SEED`` overrides it), so a failure reproduces by
  rerunning that test alone; the seed is recorded in the test's report properties.
- `to_numpy` / `from_numpy`: move arrays between numpy and a namespace.
- `draw_case`: random inputs of one attention call (q, k, v, logits, gates) as numpy float64.
- `definition_scale`: the output scale of spec 7.1 for a case (`zeros_conformance.compare`).
- `stream`: a backend called piece by piece with the state carried (ZS-STREAM-PIECES).
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np
import pytest

LIBRARIES = ("numpy", "array_api_strict", "torch", "jax")
SEED = int(os.environ.get("ZEROS_TEST_SEED", "20250601"))


def _namespace(library: str) -> Any:
    if library == "torch":
        torch = pytest.importorskip(
            "torch", reason="torch is not installed: the torch CPU namespace is not tested"
        )
        return array_api_compat.array_namespace(torch.zeros(1))
    if library == "jax":
        jax = pytest.importorskip("jax", reason="jax is not installed (optional extra `jax`)")
        jax.config.update("jax_enable_x64", True)  # float64 arrays, as the tests expect
        return array_api_compat.array_namespace(jax.numpy.zeros(1))
    module = pytest.importorskip(library, reason=f"{library} is not installed")
    return array_api_compat.array_namespace(module.asarray([0.0]))


@pytest.fixture(params=LIBRARIES)
def xp(request: pytest.FixtureRequest) -> Any:
    """The array-API namespace of one library (as `array_api_compat.array_namespace` gives)."""
    return _namespace(request.param)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator whose seed is fixed by the test's id (reported on failure)."""
    seed = SEED ^ zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Print the seed of a failing test that used `rng`, so that it can be reproduced."""
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(
                    ("reproduce", f"rng seed {value} (ZEROS_TEST_SEED={SEED}, {item.nodeid})")
                )
    return report


def library_name(x: Any) -> str:
    """Short name of the library of array `x` (``numpy``, ``array_api_strict``, ``torch``)."""
    return array_api_compat.array_namespace(x).__name__.removeprefix("array_api_compat.")


def from_numpy(xp: Any, x: Any, dtype: str | None = None) -> Any:
    """`x` (numpy array or number) as an array of namespace `xp`, of dtype name `dtype`."""
    array = xp.asarray(np.asarray(x, dtype=np.float64))
    return array if dtype is None else xp.astype(array, getattr(xp, dtype))


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy of array `x` of any supported library (bfloat16 becomes float32)."""
    if array_api_compat.is_torch_array(x):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy().copy()
    if array_api_compat.is_numpy_array(x):
        return np.array(x)
    return np.from_dlpack(x).copy()


def dtype_name(dtype: Any) -> str:
    """``"float32"`` etc. for a dtype of any supported library."""
    return str(dtype).rsplit(".", 1)[-1]


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` rounded to `dtype` and back to float64 (bfloat16 through torch)."""
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(torch.bfloat16).double().numpy()
    return np.asarray(x).astype(dtype).astype(np.float64)


@dataclass
class Case:
    """Inputs of one attention call as numpy float64 arrays; gates as arrays or floats."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None
    gates: dict[str, Any] = field(default_factory=dict)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"logits": self.logits, **self.gates}

    def map(self, f: Any) -> Case:
        """The case with `f` applied to every array (floats stay floats)."""

        def g(x: Any) -> Any:
            return x if x is None or isinstance(x, float) else f(x)

        return Case(
            g(self.q),
            g(self.k),
            g(self.v),
            g(self.logits),
            {name: g(x) for name, x in self.gates.items()},
        )


def draw_case(
    rng: np.random.Generator,
    n: int,
    *,
    d: int = 4,
    dv: int = 3,
    batch: tuple[int, ...] = (),
    explicit_logits: bool = True,
    gates: str = "random",
    logit_scale: float = 2.0,
) -> Case:
    """Random inputs of one call; leading axes of k and v are broadcast forms of `batch`.

    gates: "random" (three unequal per-step gate arrays of shape (*batch, n) or (n,)),
    "default" (no gates given) or "scalar" (three unequal Python floats).
    """
    ones = tuple(1 for _ in batch)
    k_batch = ones[:1] + batch[1:] if batch else ()
    v_batch = batch[:1] + ones[1:] if batch else ()
    q = rng.normal(size=(*batch, n, d))
    k = rng.normal(size=(*k_batch, n, d))
    v = rng.normal(size=(*v_batch, n, dv))
    logits = rng.normal(scale=logit_scale, size=(*batch, n)) if explicit_logits else None
    if gates == "random":
        g = {
            "first": rng.uniform(-1.5, 1.5, size=(*batch, n)),
            "higher": rng.uniform(-1.5, 1.5, size=(n,)),
            "zero": rng.uniform(-1.5, 1.5, size=(*batch, n)),
        }
    elif gates == "scalar":
        g = {"first": 0.75, "higher": -0.4, "zero": 0.3}
    elif gates == "default":
        g = {}
    else:
        raise ValueError(f"unknown gates {gates!r}")
    return Case(q, k, v, logits, g)


def gate_arrays(case: Case, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gates of `case` as float64 arrays broadcastable to (..., N) (defaults 1, 1, 0)."""
    defaults = {"first": 1.0, "higher": 1.0, "zero": 0.0}
    return tuple(
        np.asarray(case.gates.get(name, defaults[name]), dtype=np.float64) * np.ones(n)
        for name in ("first", "higher", "zero")
    )


def definition_scale(case: Case, *, causal: bool, logits: np.ndarray | None = None) -> np.ndarray:
    """Output scale of spec 7.1 (``zeros_conformance.output_scale``) for `case`.

    `logits` are the logits actually used (needed when the case relies on the default ones).
    """
    from zeros_conformance import output_scale

    s = case.logits if logits is None else logits
    n = case.q.shape[-2]
    first, higher, zero = gate_arrays(case, n)
    return output_scale(case.v, s, first, higher, zero, causal=causal)


def assert_close(
    out: np.ndarray, ref: np.ndarray, scale: np.ndarray, tolerance: float, what: str = ""
) -> None:
    """Scale-relative comparison of spec 7.1 (``zeros_conformance.compare``)."""
    from zeros_conformance import compare

    result = compare(np.asarray(out), np.asarray(ref, dtype=np.float64), scale, tolerance)
    assert result.passed, f"{what}: {result.describe()}"


def assert_within(error: Any, bound: Any, what: str = "") -> None:
    """Every entry of `error` is at most the (broadcast) `bound`; reports the worst entry."""
    error, bound = np.broadcast_arrays(np.asarray(error, float), np.asarray(bound, float))
    excess = np.where(error <= bound, 0.0, np.where(np.isnan(error), np.inf, error - bound))
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    assert not excess.any(), (
        f"{what}: error {error[worst]:.3g} exceeds bound {bound[worst]:.3g} at {worst}"
    )


def stream(attention: Callable[..., Any], q: Any, k: Any, v: Any, options: dict[str, Any],
           bounds: list[int]) -> tuple[list[Any], Any]:
    """The outputs of ``attention`` called on the pieces between consecutive `bounds` (sorted
    positions along N) with the state carried from call to call, and the last state. Options
    with an N axis (arrays) are cut alike; scalars and None are passed whole."""
    state, pieces = None, []
    for a, z in itertools.pairwise(bounds):
        piece = {name: x[..., a:z] if getattr(x, "ndim", 0) else x for name, x in options.items()}
        out, state = attention(q[..., a:z, :], k[..., a:z, :], v[..., a:z, :], state=state,
                               return_state=True, **piece)
        pieces.append(out)
    return pieces, state
