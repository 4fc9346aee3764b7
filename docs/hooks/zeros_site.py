"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

- The spec page is generated from ``spec/zeros-spec.md``, the single source, with an anchor
  per requirement: ``#### ZS-ACC-REFERENCE: ...`` gets the id ``zs-acc-reference``, so that
  reports link to ``spec/#zs-acc-reference``.
- Math is rendered at build time: pymdownx.arithmatex marks the TeX (``$...$``, ``$$...$$``
  and ```` ```math ```` fences) and `on_page_content` replaces each mark with MathML from
  latex2mathml, which browsers render natively. No script, font or network is needed when
  a page is viewed; TeX that latex2mathml cannot read fails the build.
- The benchmark page shows the table and plot of a committed ``zeros-bench --json`` run,
  drawn by ``zeros_bench.report`` at build time.
- mkdocstrings reads ``zeros_conformance`` from its sources, which live in ``conformance/``
  (a setuptools package-dir): griffe cannot find that folder by the package's name and would
  import the package instead, which loses the docstrings of its constants.
"""

from __future__ import annotations

import atexit
import html
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

from zeros_bench import report

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "zeros-spec.md"
SPEC_PAGE = "spec.md"
BENCH_RUNS = "benchmarks"

_REQUIREMENT = re.compile(r"^(#### (ZS-[A-Z0-9-]+): .+)$", re.M)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_TABLE = re.compile(r"^<!-- zeros-bench table: (\S+\.json) -->$", re.M)
_LIMITS = re.compile(r"\\(max|min)(?=\s*_)")
_BARS = re.compile(r'<mo((?: [a-z]+="[^"]*")*)>(&#x0007C;|&#x02016;)</mo>')
_UNKNOWN = re.compile(r">[^<]*(\\[A-Za-z]+|&(?!#x?[0-9A-Fa-f]+;|[A-Za-z]+;))")


def spec_markdown(text: str) -> str:
    """The spec's text with ``{#zs-...}`` after each requirement heading."""
    return _REQUIREMENT.sub(lambda m: f"{m.group(1)} {{#{m.group(2).lower()}}}", text)


def mathml(tex: str, *, display: bool) -> str:
    """MathML of one formula; `ValueError` naming the formula when latex2mathml cannot read
    it (an exception, or an unknown command it would otherwise print as text)."""
    if display:  # as TeX does: limits of max and min under them in display math
        tex = _LIMITS.sub(r"\\\1\\limits", tex)
    try:
        out = convert(tex, display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises its own exception types
        raise ValueError(f"cannot render the formula {tex!r}: {exc!r}") from exc
    bad = _UNKNOWN.search(out)
    if bad:
        raise ValueError(f"cannot render the formula {tex!r}: {bad.group(1)!r} is unknown")
    # |x| and ||x||: no operator spacing around the bars, as in TeX
    return _BARS.sub(r'<mo\1 lspace="0em" rspace="0em">\2</mo>', out)


@event_priority(100)  # before mkdocstrings reads its handlers' configuration
def on_config(config: Any) -> Any:
    """Give mkdocstrings a search path where ``zeros_conformance`` is a folder of that name."""
    folder = Path(tempfile.mkdtemp(prefix="zeros-docs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "zeros_conformance").symlink_to(ROOT / "conformance", target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(folder), str(ROOT)]
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the spec page and the plot of every committed benchmark run."""
    files.append(File.generated(config, SPEC_PAGE, content=spec_markdown(SPEC.read_text())))
    runs = Path(config["docs_dir"]) / BENCH_RUNS
    with tempfile.TemporaryDirectory() as folder:
        for path in sorted(runs.glob("*.json")):
            png = Path(folder) / f"{path.stem}.png"
            report.plot(json.loads(path.read_text()), str(png))
            files.append(
                File.generated(config, f"{BENCH_RUNS}/{png.name}", content=png.read_bytes())
            )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace ``<!-- zeros-bench table: FILE.json -->`` with that run's table."""

    def table(match: re.Match) -> str:
        path = Path(page.file.abs_src_path).parent / match.group(1)
        return "```text\n" + report.table(json.loads(path.read_text())) + "\n```"

    return _TABLE.sub(table, markdown)


def on_page_content(content: str, page: Any, config: Any, files: Files) -> str:
    """Replace the TeX marked by arithmatex with MathML."""

    def render(display: bool) -> Any:
        return lambda match: mathml(html.unescape(match.group(1)).strip(), display=display)

    try:
        return _INLINE.sub(render(False), _BLOCK.sub(render(True), content))
    except ValueError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from exc
