"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

- The spec page is generated from ``spec/zeros-spec.md``, the single source, with an anchor
  per requirement: ``#### ZS-ACC-REFERENCE: ...`` gets the id ``zs-acc-reference``, so that
  reports link to ``spec/#zs-acc-reference``.
- Math is rendered at build time: pymdownx.arithmatex marks the TeX (``$...$``, ``$$...$$``
  and ```` ```math ```` fences) and `on_page_content` replaces each mark with MathML from
  latex2mathml, which browsers render natively. No script, font or network is needed when
  a page is viewed; TeX that latex2mathml cannot read fails the build.
- The benchmark page shows the plot and table of a committed ``zeros-bench --json`` run,
  drawn by ``zeros_bench.report`` at build time, and a summary and a table of targets computed
  from the same JSON: no measured number is typed into a page.
- The requirements page holds a table of the spec's requirements, read from the spec when the
  site is built.
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
from zeros_conformance import load_requirements

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "zeros-spec.md"
SPEC_PAGE = "spec.md"
BENCH_RUNS = "benchmarks"

_REQUIREMENT = re.compile(r"^(#### (ZS-[A-Z0-9-]+): .+)$", re.M)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_BENCH = re.compile(r"^<!-- zeros-bench (table|summary|targets): (\S+\.json) -->$", re.M)
_REQUIREMENTS = re.compile(r"^<!-- zeros-conformance requirements -->$", re.M)
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


def requirements_table(spec_link: str = "spec.md") -> str:
    """The spec's requirements as a Markdown table, each ID linked to its anchor."""
    rows = ["| ID | level | feature | title |", "| --- | --- | --- | --- |"]
    rows += [f"| [{r.id}]({spec_link}#{r.id.lower()}) | {r.level} | {r.feature} | "
             f"{r.title.replace('|', '&#124;')} |" for r in load_requirements()]
    return "\n".join(rows)


def _series(run: dict) -> list[dict]:
    """The run's main series, as in its plot: the rows with the first row's gates, one per N,
    in order of N."""
    rows = [row for rows in run["configs"].values() for row in rows]
    same = [row for row in rows if row.get("gates") == rows[0].get("gates")]
    return sorted({row["n"]: row for row in same}.values(), key=lambda row: row["n"])


def _span(values: list[float], form: str) -> str:
    """``a`` or ``a to b``: the range of `values`, each written with `form`."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low} to {high}"


def bench_summary(run: dict) -> str:
    """What a run shows, in a few sentences computed from its JSON."""
    rows, name = _series(run), run["backend"]
    faster = [row["n"] for i, row in enumerate(rows)
              if all(later["vs_softmax"] < 1 for later in rows[i:])]
    last = rows[-1]
    share = f"{100 * last['vs_softmax']:.1f}% of softmax's time at N = {last['n']}"
    if not faster:
        lines = [f"The {name} backend is slower than softmax attention at every N of the run; "
                 f"it takes {share}."]
    elif faster[0] == rows[0]["n"]:
        lines = [f"The {name} backend is faster than softmax attention at every N of the run "
                 f"and takes {share}."]
    else:
        lines = [f"The {name} backend is faster than softmax attention from N = {faster[0]} "
                 f"on and takes {share}."]
    growth = [row for row in rows if "time_8n_ratio" in row]
    if growth:
        lines.append(
            "From N to 8N its time grows by a factor of "
            f"{_span([row['time_8n_ratio'] for row in growth], '{:.1f}')} (8 is linear, 64 "
            "quadratic) and its peak memory beyond inputs and output by "
            f"{_span([row['memory_8n_ratio'] for row in growth], '{:.2f}')}.")
    ratios = [row["reference_vs_backend"] for row in rows]
    reference = f"`zeros_ref` takes {_span(ratios, '{:.1f}')} times the backend's time"
    alone = [row["reference_vs_one_worker"] for row in rows if "reference_vs_one_worker" in row]
    if alone:
        reference += (f", and {_span(alone, '{:.1f}')} times its time on one worker "
                      "thread")
    lines.append(reference + ".")
    gemm = run["gemm_flops"] / 1e9
    rate = (f"One large float32 GEMM runs at {gemm:.0f} GFLOP/s on this machine; the backend "
            f"reaches {_span([100 * row['gemm_share'] for row in rows], '{:.0f}')}% of that "
            "rate on the chunked form's flop count")
    ceiling = [row["product_flops"] / 1e9 for row in rows if "product_flops" in row]
    if ceiling:
        rate += (f", and the form's products timed alone (the product ceiling) "
                 f"{_span(ceiling, '{:.0f}')} GFLOP/s, "
                 f"{_span([100 * c / gemm for c in ceiling], '{:.0f}')}% of it")
    lines.append(rate + ".")
    decode = run.get("decode")
    if decode:
        (short, _), (long, _) = sorted(decode["times"].items(), key=lambda item: int(item[0]))
        lines.append(f"A decode step after {long} tokens of context takes "
                     f"{decode['ratio']:.2f} times as long as one after {short}.")
    return "\n".join(f"- {line}" for line in lines)


# The targets of issue 5: (target, JSON key of a row, at N (None: every N that has the key),
# limit, how a value is written, whether the limit is a floor rather than a ceiling).
_TARGETS = (
    ("%GEMM >= 60% at N = 8192", "gemm_share", 8192, 0.60, "{:.1%}", True),
    ("time / softmax's time <= 0.3 at N = 8192", "vs_softmax", 8192, 0.3, "{:.3f}", False),
    ("time / softmax's time <= 0.05 at N = 65536", "vs_softmax", 65536, 0.05, "{:.3f}", False),
    ("time(8N) / time(N) <= 8.8", "time_8n_ratio", None, 8.8, "{:.2f}", False),
    ("peak memory(8N) / peak memory(N) <= 8.8", "memory_8n_ratio", None, 8.8, "{:.2f}", False),
    ("`zeros_ref`'s time / the backend's <= 3", "reference_vs_backend", None, 3.0, "{:.2f}",
     False),
    ("the same against the backend on one worker thread <= 3", "reference_vs_one_worker",
     None, 3.0, "{:.2f}", False),
)
_DECODE_LIMIT = 1.2  # issue 5: a decode step at the long context / at the short one


def bench_targets(run: dict) -> str:
    """The targets of issue 5 as a Markdown table: the run's values, per gates setting, and
    whether every one of them meets the target."""
    rows = [row for rows in run["configs"].values() for row in rows]
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for target, key, n, limit, form, floor in _TARGETS:
        chosen = [row for row in rows if key in row and n in (None, row["n"])]
        if not chosen:
            lines.append(f"| {target} | not in this run | - |")
            continue
        values = {}
        for row in chosen:
            values.setdefault(row.get("gates", "default"), []).append(row[key])
        measured = "; ".join(f"{gates} gates: {_span(found, form)}"
                             for gates, found in values.items())
        met = all(v >= limit if floor else v <= limit
                  for found in values.values() for v in found)
        lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")
    decode = run.get("decode")
    if decode:
        met = "yes" if decode["ratio"] <= _DECODE_LIMIT else "no"
        lines.append(f"| decode step at the long context / at the short one <= {_DECODE_LIMIT} "
                     f"| {decode['ratio']:.2f} | {met} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace ``<!-- zeros-bench table|summary|targets: FILE.json -->`` with what that run
    shows, and ``<!-- zeros-conformance requirements -->`` with the requirements table."""

    def bench(match: re.Match) -> str:
        path = Path(page.file.abs_src_path).parent / match.group(2)
        run = json.loads(path.read_text())
        if match.group(1) == "table":
            return "```text\n" + report.table(run) + "\n```"
        return (bench_summary if match.group(1) == "summary" else bench_targets)(run)

    spec_link = "../" * page.file.src_uri.count("/") + SPEC_PAGE
    markdown = _REQUIREMENTS.sub(lambda _: requirements_table(spec_link), markdown)
    return _BENCH.sub(bench, markdown)


def on_page_content(content: str, page: Any, config: Any, files: Files) -> str:
    """Replace the TeX marked by arithmatex with MathML."""

    def render(display: bool) -> Any:
        return lambda match: mathml(html.unescape(match.group(1)).strip(), display=display)

    try:
        return _INLINE.sub(render(False), _BLOCK.sub(render(True), content))
    except ValueError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from exc
