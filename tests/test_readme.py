"""The README's promises: two Quickstart lines, usage examples that run (a streamed call and a
packed one), an example backend file that passes the quick conformance run, and a backend table
that is the registry's."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pytest

from zeros_conformance import cli, registry

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BACKEND_ROW = re.compile(
    r"^\| `([a-z-]+)` \| `([\w.]+:\w+)` \| ([\w, ]+) \| ([\w, ]+) \| (.+) \|$", re.M
)


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


def test_readme_says_how_to_run_the_slow_tests() -> None:
    assert "python -m pytest -m slow" in README


def test_usage_example_runs() -> None:
    namespace: dict = {}
    exec(next(b for b in blocks("python") if "return_state=True" in b), namespace)
    whole = namespace["zeros_ref"].attention(
        namespace["q"], namespace["k"], namespace["v"], logits=namespace["s"],
        first=namespace["g1"], higher=namespace["gh"])
    streamed = np.concatenate([namespace["first"], namespace["rest"]], axis=-2)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-12)


def test_packed_example_runs() -> None:
    """The packed block, run after the first one: every sequence's tokens of the prefill and
    of the continuation from the returned states equal one call on the whole sequence."""
    namespace: dict = {}
    for marker in ("return_state=True", "cu_seqlens"):
        exec(next(b for b in blocks("python") if marker in b), namespace)
    first, then = (0, 50, 80, 100), (0, 1, 8, 8)  # the offsets of the two calls
    for j in range(3):
        a, b, c, d = first[j], first[j + 1], then[j], then[j + 1]
        whole = [np.concatenate([namespace[x][:, a:b], namespace[y][:, c:d]], axis=1)
                 for x, y in (("pq", "nq"), ("pk", "nk"), ("pv", "nv"), ("ps", "ns"))]
        expected = namespace["zeros_ref"].attention(*whole[:3], logits=whole[3])
        got = np.concatenate([namespace["packed"][:, a:b], namespace["more"][:, c:d]], axis=1)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"sequence {j}")
    assert namespace["states"].length == (51, 37, 20)


def test_packed_torch_example_runs() -> None:
    """The torch block with a chunk plan, run after the packed one, gives its outputs."""
    pytest.importorskip("torch")
    namespace: dict = {}
    for marker in ("return_state=True", "cu_seqlens", "chunk_plan"):
        exec(next(b for b in blocks("python") if marker in b), namespace)
    np.testing.assert_allclose(namespace["out"].numpy(), namespace["packed"], rtol=0,
                               atol=1e-10)
    assert namespace["tstates"].length == (50, 30, 20)


def test_jax_example_runs() -> None:
    """The JAX block, run after the packed one: the packed outputs of the reference, and a
    gradient of the input's shape."""
    pytest.importorskip("jax")
    namespace: dict = {}
    for marker in ("return_state=True", "cu_seqlens", "jax_backend"):
        exec(next(b for b in blocks("python") if marker in b), namespace)
    np.testing.assert_allclose(np.asarray(namespace["jout"]), namespace["packed"], rtol=0,
                               atol=1e-4)
    assert namespace["dq"].shape == (4, 100, 64)
    assert bool(np.all(np.isfinite(np.asarray(namespace["dq"]))))


def test_example_backend_conforms(tmp_path: Path) -> None:
    example = next(b for b in blocks("python") if "class MyBackend" in b)
    path = tmp_path / "my_backend.py"
    path.write_text(example)
    assert cli.main(["run", "--backend", f"{path}:backend", "--quick"]) == 0


def backend_table_problems(text: str) -> list[str]:
    """How the backend table of `text` differs from the registry: one row per registered
    backend, in any order, with its entry point, and the dtypes and features of the object it
    loads (where it loads: torch and Triton are optional)."""
    rows = {row[0]: row[1:] for row in BACKEND_ROW.findall(text)}
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group=registry.GROUP)}
    problems = [f"{name}: not in the table" for name in sorted(set(points) - set(rows))]
    problems += [f"{name}: not registered" for name in sorted(set(rows) - set(points))]
    for name, (target, dtypes, features, _) in sorted(rows.items()):
        if name not in points:
            continue
        if target != points[name].value:
            problems.append(f"{name}: entry point {target}, registered {points[name].value}")
        try:
            backend = points[name].load()
        except ImportError:
            continue
        if dtypes.split(", ") != list(backend.dtypes):
            problems.append(f"{name}: dtypes {dtypes}, claimed {backend.dtypes}")
        if set(features.split(", ")) != set(backend.features):
            problems.append(f"{name}: features {features}, claimed {sorted(backend.features)}")
    return problems


def test_backend_table_is_the_registrys() -> None:
    assert backend_table_problems(README) == []


def test_a_wrong_backend_table_is_caught() -> None:
    numpy_row = next(line for line in README.splitlines() if line.startswith("| `numpy` |"))
    cupy_row = next(line for line in README.splitlines() if line.startswith("| `cupy` |"))
    wrong = README.replace(numpy_row, numpy_row.replace("float16, ", "", 1)).replace(
        cupy_row, "")
    problems = backend_table_problems(wrong)
    assert problems[0] == "cupy: not in the table"
    assert problems[1].startswith("numpy: dtypes float32, float64")
