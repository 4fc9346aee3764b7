"""The README's promises: two Quickstart lines, a usage example that runs, and an example
backend file that passes the quick conformance run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from zeros_conformance import cli, load_requirements

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_quickstart_has_two_commands_and_ci_runs_the_test_one() -> None:
    quickstart = README.split("## Quickstart", 1)[1]
    first = re.search(r"```sh\n(.*?)```", quickstart, re.S).group(1)
    lines = [line for line in first.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "zeros-conformance run" in lines[0] and "pytest" in lines[1]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert lines[1] in ci


def test_usage_example_runs() -> None:
    namespace: dict = {}
    exec(blocks("python")[0], namespace)
    whole = namespace["zeros_ref"].attention(
        namespace["q"], namespace["k"], namespace["v"], logits=namespace["s"],
        first=namespace["g1"], higher=namespace["gh"])
    streamed = np.concatenate([namespace["first"], namespace["rest"]], axis=-2)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-12)


def test_example_backend_conforms(tmp_path: Path) -> None:
    example = next(b for b in blocks("python") if "class MyBackend" in b)
    path = tmp_path / "my_backend.py"
    path.write_text(example)
    assert cli.main(["run", "--backend", f"{path}:backend", "--quick"]) == 0


def test_requirements_table_is_the_specs() -> None:
    rows = re.findall(r"^\| (ZS-[A-Z0-9-]+) \| (MUST|SHOULD) \| ([a-z_]+) \| (.+) \|$", README,
                      re.M)
    assert rows == [(r.id, r.level, r.feature, r.title) for r in load_requirements()]


def test_kernel_example_raises_the_references_errors() -> None:
    example = next(b for b in blocks("python") if "kernel.check_call" in b)
    namespace: dict = {}
    exec(example, namespace)
    q = k = v = np.ones((2, 5, 4))
    with pytest.raises(ValueError, match="`k` must have the same last axis as `q`"):
        namespace["attention"](q, k[..., :3], v)
    assert namespace["attention"](q, k, v) is None  # the body is the reader's to write


def test_layer_examples_run() -> None:
    layer_block = next(b for b in blocks("python") if "zeros_ref.layer(" in b)
    namespace: dict = {}
    exec(layer_block, namespace)
    assert namespace["expected"].shape == (2, 128, 64)
    pytest.importorskip("torch", reason="the module needs torch")
    module_block = next(b for b in blocks("python") if "ZeroSAttention(" in b)
    exec(module_block, namespace)
    assert list(namespace["same"].state_dict()) == list(namespace["params"])
