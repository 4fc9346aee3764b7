"""The distribution ships every package of the source tree (editable installs hide a missing
one, since they map whole folders)."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11 or later")

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_package_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / path for name, path in config["package-dir"].items()}
    for top in ROOT.glob("zeros_*/__init__.py"):  # packages that are their own folder
        folders.setdefault(top.parent.name, top.parent)
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((name, *relative)))
    assert found <= set(config["packages"]), sorted(found - set(config["packages"]))


# -- entry points and documented names ----------------------------------------------------------

GROUP = "zeros.backends"
FIRST_PARTY = ("zeros_ref", "zeros_backends", "zeros_conformance", "zeros_machine", "zeros_bench")
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
TORCH_FACE = ("CHUNK_SIZE", "ChunkPlan", "SLAB_SIZE", "CudaTorchBackend", "TorchBackend",
              "ZeroSAttention", "backend", "chunk_plan", "cuda_backend", "from_params",
              "to_params")
"""The public face of `zeros_backends.torch_backend` (its pinned ``__all__``)."""


def test_installed_entry_points_are_the_declared_ones() -> None:
    """The installed metadata lists the entry points of pyproject.toml (else reinstall:
    ``pip install --no-deps -e .``)."""
    installed = {point.name: point.value for point in entry_points(group=GROUP)}
    assert installed == DECLARED


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_backend_entry_point_loads(name: str) -> None:
    """Each registered backend loads and has the protocol's required attributes (spec 10.1);
    one whose third-party dependency is missing is skipped, a missing module of ours fails."""
    (point,) = [p for p in entry_points(group=GROUP) if p.name == name]
    try:
        backend = point.load()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in FIRST_PARTY:
            raise
        pytest.skip(f"backend {name!r} needs {exc.name!r}, which is not installed")
    assert isinstance(backend.name, str) and backend.name
    for attr in ("from_numpy", "to_numpy", "attention"):
        assert callable(getattr(backend, attr)), f"{name}: {attr}"


def _documented_torch_names() -> set[str]:
    """``module:name`` for every name imported from `zeros_backends.torch_backend` (or one of
    its modules) in README.md and docs/, and ``module:`` for every dotted reference to one in
    those and in the backends' docstrings."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "backends").rglob("*.py"))]
    found = set()
    for path in texts:
        text = path.read_text()
        for module, names in re.findall(
                r"from (zeros_backends\.torch_backend[\w.]*) import ([\w, ]+)", text):
            found |= {f"{module}:{name.strip()}" for name in names.split(",") if name.strip()}
        found |= {f"{dotted}:" for dotted in re.findall(r"zeros_backends\.torch_backend[\w.]*",
                                                         text)}
    return found


def test_documented_torch_backend_names_import() -> None:
    """`from zeros_backends.torch_backend import ...` gives the pinned public face, and every
    name and dotted path the README, docs/ and the backends' docstrings use resolves."""
    pytest.importorskip("torch", reason="torch is not installed: the torch backend is not "
                        "imported (pip install 'zeros-attention-spec[torch]')")
    import zeros_backends.torch_backend as face

    assert sorted(face.__all__) == sorted(TORCH_FACE)
    for name in TORCH_FACE:
        assert getattr(face, name) is not None, name
    documented = _documented_torch_names()
    assert any(entry.endswith(":ZeroSAttention") for entry in documented)  # the scan finds
    for entry in sorted(documented):
        dotted, name = entry.split(":")
        parts = dotted.rstrip(".").split(".")
        for cut in range(len(parts), 1, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in [*parts[cut:], *([name] if name else [])]:
                assert hasattr(obj, attr), f"{entry}: {attr!r} not found"
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"{entry}: no module to import")
