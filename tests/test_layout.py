"""The layout's promises: every import points down the stack, nothing outside `zeros_ref`
reaches into its private modules, and no module grows past 450 lines.

    zeros_bench                       timing, baselines, report, CLI
      |            \\
    zeros_conformance   zeros_backends    the suite knows backends only through the registry
      |            /
    zeros_ref, zeros_machine          the reference; the machine description
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "zeros_ref": ROOT / "zeros_ref",
    "zeros_machine": ROOT / "zeros_machine",
    "zeros_backends": ROOT / "backends",
    "zeros_conformance": ROOT / "conformance",
    "zeros_bench": ROOT / "zeros_bench",
}
ALLOWED = {
    "zeros_ref": set(),
    "zeros_machine": set(),
    "zeros_backends": {"zeros_ref", "zeros_machine"},
    "zeros_conformance": {"zeros_ref", "zeros_machine"},
    "zeros_bench": {"zeros_ref", "zeros_machine", "zeros_backends", "zeros_conformance"},
}


def imports(path: Path) -> set[str]:
    """Absolute module names imported by one file (relative imports stay in the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def first_party(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in PACKAGES else None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_point_down_the_stack(package: str) -> None:
    for path in sorted(PACKAGES[package].rglob("*.py")):
        used = {first_party(name) for name in imports(path)} - {None, package}
        assert used <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {used}"


@pytest.mark.parametrize("folder", ["backends", "conformance", "zeros_bench", "tests/backends"])
def test_nothing_outside_a_package_imports_its_private_modules(folder: str) -> None:
    for path in sorted((ROOT / folder).rglob("*.py")):
        own = next((name for name, where in PACKAGES.items() if where in path.parents), None)
        private = {name for name in imports(path)
                   if first_party(name) not in (None, own)
                   and any(part.startswith("_") and not part.startswith("__")
                           for part in name.split(".")[1:])}
        assert not private, f"{path.relative_to(ROOT)} imports private {sorted(private)}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_is_over_450_lines(package: str) -> None:
    for path in sorted(PACKAGES[package].rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 450, f"{path.relative_to(ROOT)} has {lines} lines"
