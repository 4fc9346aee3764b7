"""The documentation site's promises: its examples run as written, its commands parse, and
(with the `docs` extra installed) the site builds with ``--strict``, with an anchor per
requirement, every formula rendered to MathML and nothing fetched from the network when a page
is viewed.

A page's ```` ```python ```` blocks run in order in one namespace, in a temporary folder;
```` ```pycon ```` blocks are doctests in that namespace. ```` ```sh ```` lines that call
``zeros-conformance``, ``zeros-bench``, ``zeros-gpu-check``, ``python -m zeros_bench.versus``
or ``pytest`` must parse with the tool's own argument parser. Measured numbers come from the
committed benchmark JSON when the site is built; none is typed into a page or the README.
"""

from __future__ import annotations

import argparse
import doctest
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from zeros_bench import cli as bench_cli
from zeros_bench import gpu_check, versus
from zeros_conformance import cli as conformance_cli
from zeros_conformance import load_requirements, registry, xfails

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS = DOCS / "hooks" / "zeros_site.py"
PAGES = sorted(p for p in DOCS.rglob("*.md") if HOOKS.parent not in p.parents)
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """(line, code) of each fenced block of that language on the page."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS)) if DOCS in page.parents else page.name


def run_examples(page: Path) -> None:
    """Run the page's python and pycon blocks in document order, in one namespace."""
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    found = sorted(
        blocks(page, "python") + [(line, "pycon", code) for line, code in blocks(page, "pycon")],
        key=lambda b: b[0],
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for block in found:
        line, code = block[0], block[-1]
        if "torch" in code:
            pytest.importorskip("torch", reason=f"{page_id(page)}:{line} needs torch")
        if len(block) == 2:
            exec(compile(code, f"{page_id(page)}:{line}", "exec"), namespace)
            continue
        test = doctest.DocTestParser().get_doctest(code, namespace, page.stem, str(page), line - 1)
        report: list[str] = []
        result = runner.run(test, out=report.append, clear_globs=False)
        assert result.failed == 0, "".join(report)


@pytest.mark.parametrize(
    "page", [p for p in PAGES if blocks(p, "python") or blocks(p, "pycon")], ids=page_id
)
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_examples(page)


def test_a_wrong_example_fails(tmp_path: Path) -> None:
    page = tmp_path / "wrong.md"
    page.write_text("```python\nx = 1\n```\n\n```pycon\n>>> x + 1\n3\n```\n")
    with pytest.raises(AssertionError, match=r"Expected:\s+3\s+Got:\s+2"):
        run_examples(page)
    page.write_text("```python\nimport zeros_ref\nzeros_ref.attention()\n```\n")
    with pytest.raises(TypeError):
        run_examples(page)


class Parsed(Exception):
    """Raised instead of running a command once its arguments parsed."""


TOOLS = {
    "zeros-conformance": conformance_cli.main,
    "zeros-bench": bench_cli.main,
    "zeros-gpu-check": gpu_check.main,
    "zeros_bench.gpu_check": gpu_check.main,
    "zeros_bench.versus": versus.main,
}


def command_words(command: str) -> list[str]:
    """The words of a command line without leading ``NAME=value`` settings, and with
    ``python -m MODULE`` written as ``MODULE``."""
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:2] == ["python", "-m"] or words[:2] == ["python3", "-m"]:
        words = words[2:]
    return words


def check_command(words: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Parse a command line of one of `TOOLS` with the tool's own parser and stop there: 0
    when it parses, argparse's exit status 2 when it does not."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *args: Any, **options: Any) -> Any:
        raise Parsed(parse_args(self, *args, **options))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        try:
            TOOLS[words[0]](words[1:])
        except Parsed:
            return 0
        except SystemExit as stop:
            return int(stop.code or 0)
    raise AssertionError(f"{words} ran without parsing its arguments")


def check_pytest(words: list[str], pytester: pytest.Pytester) -> str | None:
    """None when pytest's own parser, with the plugins installed (the suite's among them),
    takes the arguments; else its message."""
    try:
        pytester.parseconfig(*words[1:])
    except pytest.UsageError as error:
        return str(error)
    return None


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "sh")], ids=page_id)
def test_commands_parse(
    page: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pytester: pytest.Pytester,
) -> None:
    checked = 0
    for line, code in blocks(page, "sh"):
        for command in code.replace("\\\n", " ").splitlines():  # joins continued lines
            words = command_words(command)
            if words and words[0] in TOOLS:
                assert check_command(words, monkeypatch) == 0, f"{page_id(page)}:{line}: {command}"
                checked += 1
            elif words and words[0] == "pytest":
                assert check_pytest(words, pytester) is None, f"{page_id(page)}:{line}: {command}"
                checked += 1
    capsys.readouterr()
    assert checked or page.name == "index.md"


@pytest.mark.parametrize(
    "command",
    [
        "zeros-conformance run --backend x --dtype float8",
        "zeros-conformance run --backend x --onlyy ZS-DEF-GATES",
        "zeros-conformance run",
        "zeros-bench --gates sometimes",
        "zeros-gpu-check --device tpu",
        "python -m zeros_bench.versus torch --count 3",
        "TRITON_INTERPRET=1 zeros-conformance run --backend triton --quik",
    ],
)
def test_a_wrong_command_is_caught(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_command(command_words(command), monkeypatch) == 2


@pytest.mark.parametrize(
    "command",
    [
        "pytest --zeros-backend=x --zeros-profile=fast",
        "pytest --zeros-backnd=x",
        "pytest -m",
    ],
)
def test_a_wrong_pytest_line_is_caught(command: str, pytester: pytest.Pytester) -> None:
    assert check_pytest(command_words(command), pytester)


def test_entry_point_and_xfails_examples_are_valid(tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11 or later")
    guide = DOCS / "guides" / "backend.md"
    [(_, toml)] = blocks(guide, "toml")
    assert registry.GROUP in tomllib.loads(toml)["project"]["entry-points"]
    listed = [code for _, code in blocks(guide, "text") if code.startswith("ZS-")]
    assert listed
    for number, code in enumerate(listed):
        path = tmp_path / f"xfails-{number}.txt"
        path.write_text(code)
        assert xfails.load(path)  # `ValueError` on an ID the spec does not define


# Units that only measurements carry: a time, a rate, an amount of memory.
MEASURED = re.compile(r"\b\d[\d.,]*\s*(?:ms|us|µs|GFLOP/s|GB/s|MiB|MB|kB)\b")


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=page_id)
def test_no_measured_number_is_typed(page: Path) -> None:
    """Measured numbers change with every run: the benchmark page computes them from the
    committed JSON (docs/hooks/zeros_site.py), and no page or README types them."""
    assert MEASURED.findall(page.read_text()) == []


def test_a_typed_measurement_is_found() -> None:
    found = MEASURED.findall("at N = 8192 it takes 42.66 ms; 300.3 GFLOP/s, 13.5 MiB, 558 us")
    assert found == ["42.66 ms", "300.3 GFLOP/s", "13.5 MiB", "558 us"]


def test_backend_tables_agree() -> None:
    """docs/backends.md has the README's backend table (which tests/test_readme.py checks
    against the registry)."""

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if re.match(r"^\| `[a-z-]+` \| `", line)]

    readme = table((ROOT / "README.md").read_text())
    assert len(readme) >= 6 and table((DOCS / "backends.md").read_text()) == readme


def test_readme_says_how_to_build_the_site_and_ci_builds_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[docs]'" in readme and "mkdocs build --strict" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    # the extra is installed before the test line, so that its one pytest run builds the site
    docs, tests = ci.find("'.[docs]'"), ci.find(".venv/bin/python -m pytest")
    assert 0 <= docs < tests, ".ci/run must install the `docs` extra before it runs pytest"


# -- the site (needs the `docs` extra) --------------------------------------------------------


def hooks() -> ModuleType:
    pytest.importorskip("mkdocs", reason="the `docs` extra is not installed")
    spec = importlib.util.spec_from_file_location("zeros_site", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hooks()
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_every_requirement_is_an_anchor_of_the_spec_page(site: Path) -> None:
    page = (site / "spec" / "index.html").read_text()
    for r in load_requirements():
        assert re.search(rf'<h4 id="{r.id.lower()}">{r.id}: ', page), r.id


def test_math_is_mathml(site: Path) -> None:
    page = (site / "spec" / "index.html").read_text()
    assert page.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block"') > 5
    assert page.count('display="inline"') > 50
    assert "arithmatex" not in page and "\\(" not in page and "\\frac" not in page


def test_nothing_is_fetched_when_a_page_is_viewed(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text()
        fetched = re.findall(r'<(?:script|link|img)\b[^>]*(?:src|href)="(https?:[^"]*)"', text)
        assert not fetched, f"{page.relative_to(site)}: {fetched}"


def test_api_pages_and_benchmark_plot(site: Path) -> None:
    for page, names in (
        ("zeros_ref", ("zeros_ref.attention", "zeros_ref.layer")),
        ("kernel", ("zeros_ref.kernel.check_call", "zeros_ref.kernel.State")),
        ("conformance", ("zeros_conformance.run", "zeros_conformance.registry")),
    ):
        text = (site / "api" / page / "index.html").read_text()
        assert all(f'id="{name}"' in text for name in names), page
        assert "str(object=" not in text, f"{page}: read by import, not from the sources"
    assert (site / "benchmarks" / "numpy-cpu.png").read_bytes().startswith(b"\x89PNG")
    assert "config                   N" in (site / "benchmarks" / "index.html").read_text()


def test_requirements_table_is_the_specs() -> None:
    table = hooks().requirements_table("../spec.md")
    rows = re.findall(
        r"^\| \[(ZS-[A-Z0-9-]+)\]\(\.\./spec\.md#([a-z0-9-]+)\) \| (MUST|SHOULD) \| ([a-z_]+) "
        r"\| (.+) \|$",
        table,
        re.M,
    )
    assert rows == [(r.id, r.id.lower(), r.level, r.feature, r.title) for r in load_requirements()]


def test_requirements_page_links_every_requirement(site: Path) -> None:
    page = (site / "requirements" / "index.html").read_text()
    assert "zeros-conformance requirements -->" not in page
    for r in load_requirements():
        assert f'href="../spec/#{r.id.lower()}">{r.id}</a>' in page, r.id


def bench_run(**changes: Any) -> dict:
    """A small run in the JSON form of `zeros-bench`: a sweep of three N and a row with
    random gates."""

    def row(n: int, gates: str, vs_softmax: float, **more: Any) -> dict:
        return {"n": n, "bh": 8, "d": 64, "dv": 64, "gates": gates, "vs_softmax": vs_softmax,
                "reference_vs_backend": 4.0, "gemm_share": 0.3, "product_flops": 150e9, **more}

    run = {
        "backend": "numpy",
        "gemm_flops": 300e9,
        "configs": {
            "sweep": [row(1024, "default", 1.5, time_8n_ratio=7.9, memory_8n_ratio=1.2),
                      row(8192, "default", 0.2), row(65536, "default", 0.01)],
            "gates": [row(8192, "random", 0.4, gemm_share=0.62)],
        },
        "decode": {"bh": 8, "times": {"1024": {"min": 1e-3}, "65536": {"min": 1.3e-3}},
                   "ratio": 1.3},
    }
    return run | changes


def test_bench_summary_is_computed_from_the_run() -> None:
    summary = hooks().bench_summary(bench_run()).splitlines()
    assert summary[0] == ("- The numpy backend is faster than softmax attention from N = 8192 "
                          "on and takes 1.0% of softmax's time at N = 65536.")
    assert "by a factor of 7.9 (8 is linear" in summary[1]
    assert "30% of that rate" in summary[3] and "150 GFLOP/s, 50% of it" in summary[3]
    assert summary[4] == ("- A decode step after 65536 tokens of context takes 1.30 times as "
                          "long as one after 1024.")


def test_bench_targets_are_computed_from_the_run() -> None:
    lines = hooks().bench_targets(bench_run()).splitlines()
    met = {line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1][:-2] for line in lines[2:]}
    assert met["%GEMM >= 60% at N = 8192"] == "no"  # the default gates' 30% fails the floor
    assert "default gates: 30.0%; random gates: 62.0%" in lines[2]
    assert met["time / softmax's time <= 0.3 at N = 8192"] == "no"  # random gates: 0.4
    assert met["time / softmax's time <= 0.05 at N = 65536"] == "yes"
    assert met["the same against the backend on one worker thread <= 3"] == "-"
    assert met["decode step at the long context / at the short one <= 1.2"] == "no"


def test_benchmark_page_shows_the_committed_run(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text()
    assert "zeros-bench summary:" not in page and "zeros-bench targets:" not in page
    run = json.loads((DOCS / "benchmarks" / "numpy-cpu.json").read_text())
    assert f"One large float32 GEMM runs at {run['gemm_flops'] / 1e9:.0f} GFLOP/s" in page
    assert "<td>%GEMM &gt;= 60% at N = 8192</td>" in page


def test_a_formula_latex2mathml_cannot_read_fails_the_build() -> None:
    mathml = hooks().mathml
    assert mathml(r"\frac{1}{n}", display=False).startswith("<math")
    for bad in (r"\Big\langle k", r"a & b", r"x_{"):
        with pytest.raises(ValueError, match="cannot render the formula"):
            mathml(bad, display=True)


def test_requirement_headings_get_their_ids() -> None:
    text = "#### ZS-ACC-REFERENCE: agreement\nLevel: MUST. Feature: core.\n#### Other\n"
    assert hooks().spec_markdown(text).splitlines()[::2] == [
        "#### ZS-ACC-REFERENCE: agreement {#zs-acc-reference}",
        "#### Other",
    ]
