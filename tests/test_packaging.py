"""The distribution ships every package of the source tree (editable installs hide a missing
one, since they map whole folders)."""

from __future__ import annotations

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
