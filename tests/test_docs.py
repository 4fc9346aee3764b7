"""The documentation site's promises: its examples run as written, its commands parse, and
(with the `docs` extra installed) the site builds with ``--strict``, with an anchor per
requirement, every formula rendered to MathML and nothing fetched from the network when a page
is viewed.

A page's ```` ```python ```` blocks run in order in one namespace, in a temporary folder;
```` ```pycon ```` blocks are doctests in that namespace. ```` ```sh ```` lines that call
``zeros-conformance`` or ``zeros-bench`` must parse with the tool's own argument parser.
"""

from __future__ import annotations

import argparse
import doctest
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from zeros_bench import cli as bench_cli
from zeros_conformance import cli as conformance_cli
from zeros_conformance import load_requirements, plugin, registry, xfails

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


def zeros_options() -> set[str]:
    """The options the pytest plugin registers."""

    class Recorder:
        def __init__(self) -> None:
            self.names: set[str] = set()

        def getgroup(self, *args: Any) -> Recorder:
            return self

        def addoption(self, *names: str, **options: Any) -> None:
            self.names.update(names)

    recorder = Recorder()
    plugin.pytest_addoption(recorder)  # type: ignore[arg-type]
    return recorder.names


class Parsed(Exception):
    """Raised instead of running a command once its arguments parsed."""


def check_command(words: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Parse a ``zeros-conformance`` or ``zeros-bench`` command line with the tool's own parser
    and stop there: 0 when it parses, argparse's exit status 2 when it does not."""
    mains = {"zeros-conformance": conformance_cli.main, "zeros-bench": bench_cli.main}
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *args: Any, **options: Any) -> Any:
        raise Parsed(parse_args(self, *args, **options))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        try:
            mains[words[0]](words[1:])
        except Parsed:
            return 0
        except SystemExit as stop:
            return int(stop.code or 0)
    raise AssertionError(f"{words} ran without parsing its arguments")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "sh")], ids=page_id)
def test_commands_parse(
    page: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = 0
    for line, code in blocks(page, "sh"):
        for command in code.splitlines():
            words = shlex.split(command, comments=True)
            if words and words[0] in ("zeros-conformance", "zeros-bench"):
                assert check_command(words, monkeypatch) == 0, f"{page_id(page)}:{line}: {command}"
                checked += 1
            elif words and words[0] == "pytest":
                unknown = {w.split("=")[0] for w in words[1:]} - zeros_options()
                assert not unknown, f"{page_id(page)}:{line}: unknown options {unknown}"
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
    ],
)
def test_a_wrong_command_is_caught(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_command(command.split(), monkeypatch) == 2


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
