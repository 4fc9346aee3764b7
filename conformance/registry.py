"""Finding backends: entry points of group ``zeros.backends``, ``module:attr`` or
``path/to/file.py:attr`` (spec section 10.1)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = ["GROUP", "BackendLoadError", "available", "load"]

GROUP = "zeros.backends"


class BackendLoadError(Exception):
    """The backend named on the command line could not be loaded; the message says why."""


def available() -> dict[str, str]:
    """Registered backends: name -> ``module:attr``."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def _attribute(obj: Any, dotted: str, where: str) -> Any:
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendLoadError(f"{where} has no attribute {dotted!r}") from None
    return obj


def _from_file(path: Path, attr: str) -> Any:
    if not path.is_file():
        raise BackendLoadError(f"no such file: {path}")
    name = f"zeros_backend_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BackendLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Like a script, the file may import modules that sit beside it.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise BackendLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(folder)
    return _attribute(module, attr, str(path))


def load(spec: str) -> Any:
    """Load a backend from a registered name, ``module:attr`` or ``file.py:attr``.

    Raises
    ------
    BackendLoadError
        Unknown name, missing module, file or attribute, or an import that fails.
    """
    registered = available()
    if spec in registered:
        (point,) = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
        try:
            return point.load()
        except Exception as exc:
            raise BackendLoadError(
                f"backend {spec!r} ({point.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    if ":" not in spec:
        known = ", ".join(sorted(registered)) or "none"
        raise BackendLoadError(
            f"unknown backend {spec!r}; registered: {known}; or give module:attr or file.py:attr"
        )
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        return _from_file(Path(target), attr)
    try:
        module = importlib.import_module(target)
    except Exception as exc:
        raise BackendLoadError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, attr, target)
