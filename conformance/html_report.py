"""The HTML report of a run: one self-contained file a person reads in a browser.

``zeros-conformance run ... --html report.html`` writes it. It holds the summary (backend,
machine, verdict, counts), every requirement with its level, status and worst measurement
against its limit, a card per requirement with its measurements, the failing case's inputs and
a command that reproduces it, and figures (`_plots`, where matplotlib is installed):

- the time and memory scaling measured by ZS-ON-TIME, ZS-ON-MEMORY, ZS-ON-DECODE, ZS-ON-STATE;
- the error of every case against the tolerance of its dtype (ZS-ACC-*, ZS-DTYPE-HALF);
- for a failed comparison, the error of each output row along the sequence: where the error
  starts is the first clue to what a kernel gets wrong.

Figures are PNG images embedded as ``data:`` URIs, the style sheet is inline, and there is no
script. A Content-Security-Policy in the page forbids loading anything else, so the report
looks the same offline, attached to a CI run or mailed. Each requirement ID links to its text
in the spec at ``SPEC_URL#zs-...`` (the lowercase ID, the anchor of the documentation site).
"""

from __future__ import annotations

import base64
import html
import math
import shlex
from collections.abc import Callable
from typing import Any

from . import _plots
from ._harness import Context, Measurement
from .protocol import usable_dtypes
from .report import to_json
from .runner import Outcome
from .status import (
    BLOCKED,
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    NOT_CLAIMED,
    NOT_CONFORMING,
    PASSED,
    XFAIL,
    XPASS,
)

__all__ = ["SPEC_URL", "render", "spec_link"]

SPEC_URL = "spec/"
"""Default base of the links to the spec: its page on the documentation site, relative to a
report at the site's root (``--spec-url`` sets another)."""
MEASUREMENTS_SHOWN = 12
"""Measurements listed per requirement: those past their limit first, then the closest."""
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d1d1f; margin: 0 auto;
       max-width: 1100px; padding: 0 1.2em 3em; }
h1 { margin: .6em 0 .1em; font-size: 1.7em; } h2 { margin-top: 1.6em; font-size: 1.3em; }
.verdict { font-size: 1.35em; font-weight: 700; padding: .35em .7em; border-radius: 6px;
           display: inline-block; color: #fff; margin: .3em 0; }
.verdict.pass { background: #2e7d32; } .verdict.fail { background: #c62828; }
table { border-collapse: collapse; margin: .5em 0; width: 100%; font-size: .93em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .5em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.meta th { width: 11em; background: none; color: #555; font-weight: 600; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 4px; font-size: .85em;
         font-weight: 600; white-space: nowrap; border: 1px solid transparent; }
.s-passed { background: #e6f4ea; color: #1e5e24; } .s-failed, .s-error { background: #fde7e7;
  color: #a11a1a; } .s-blocked { background: #fff0e0; color: #9a4b00; }
.s-xfail { background: #fff7d6; color: #6d5200; } .s-xpass { background: #efe6fb;
  color: #5a2d91; } .s-na { background: #f0f0f0; color: #666; }
.level-MUST { border-color: #999; } .level-SHOULD { border-color: #ccc; color: #666; }
details { border: 1px solid #ddd; border-radius: 6px; margin: .6em 0; padding: .2em .8em; }
details[open] { padding-bottom: .8em; } summary { cursor: pointer; padding: .3em 0; }
details.bad { border-left: 5px solid #c62828; } details.xfail { border-left: 5px solid #c9a400; }
details.xpass { border-left: 5px solid #7b45c4; }
code, pre { font: .9em/1.4 ui-monospace, monospace; background: #f6f6f8; border-radius: 4px; }
code { padding: 0 .25em; } pre { padding: .6em; overflow-x: auto; white-space: pre-wrap; }
img { max-width: 100%; height: auto; display: block; margin: .4em 0; }
.note { color: #555; font-style: italic; } .reason { color: #6d5200; }
"""


def spec_link(spec_url: str, requirement_id: str) -> str:
    """The address of a requirement's text: `spec_url` with the lowercase ID as anchor."""
    return f"{spec_url}#{requirement_id.lower()}"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float) -> str:
    x = float(x)
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _badge(status: str) -> str:
    kind = "na" if status in (NOT_CLAIMED, NOT_APPLICABLE) else status
    return f'<span class="badge s-{_e(kind)}">{_e(status)}</span>'


def _level(level: str) -> str:
    return f'<span class="badge level-{_e(level)}">{_e(level)}</span>'


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(draw: Callable[[], bytes], alt: str) -> str:
    """The figure `draw` makes, or why it could not be drawn (the report is still written)."""
    if _plots.missing() is not None:
        return '<p class="note">(figure left out: matplotlib is not installed)</p>'
    try:
        return _image(draw(), alt)
    except Exception as exc:  # a figure must not cost the report of a long run
        return f'<p class="note">The figure "{_e(alt)}" could not be drawn: {_e(repr(exc))}</p>'


def _counts(outcomes: list[Outcome]) -> list[tuple[str, int]]:
    def count(*statuses: str) -> int:
        return sum(o.status in statuses for o in outcomes)

    return [
        (PASSED, count(PASSED)),
        (FAILED, count(FAILED)),
        (ERROR, count(ERROR)),
        (BLOCKED, count(BLOCKED)),
        (XFAIL, count(XFAIL)),
        (XPASS, count(XPASS)),
        (NOT_CLAIMED, count(NOT_CLAIMED)),
        (NOT_APPLICABLE, count(NOT_APPLICABLE)),
    ]


def _summary(report: dict[str, Any], outcomes: list[Outcome], seconds: float) -> str:
    backend = report["backend"]
    conforms = report["exit_code"] == 0
    counts = " ".join(f"{_badge(status)}&nbsp;{n}" for status, n in _counts(outcomes) if n)
    rows = [
        (
            "backend",
            f"<code>{_e(backend['target'])}</code> ({_e(backend['name'])}) on "
            f"{_e(backend['device'])}",
        ),
        ("dtypes", _e(", ".join(backend["dtypes"]))),
        ("features", _e(", ".join(backend["features"]))),
        ("profile, seed", f"{_e(report['profile'])}, seed {_e(report['seed'])}"),
        ("machine", _e(report["machine"])),
        (
            "versions",
            f"suite {_e(report['suite_version'])}, spec "
            f"{_e(report['spec_version'])}, reference "
            f"{_e(report['reference_version'])}",
        ),
        ("duration", f"{seconds:.1f} s"),
        (
            "expected failures",
            "strict: an xpass fails the run"
            if report["strict_xfails"]
            else "an xpass is reported and does not fail the run",
        ),
    ]
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    verdict = "CONFORMS" if conforms else "DOES NOT CONFORM"
    return (
        f"<h1>ZeroS conformance: {_e(backend['name'])}</h1>"
        f'<p><span class="verdict {"pass" if conforms else "fail"}" id="verdict">'
        f'{verdict}</span></p><p class="counts">{counts}</p>'
        f'<table class="meta">{table}</table>'
    )


def _worst(o: Outcome) -> str:
    w = o.worst
    if w is None:
        return _e(o.message)
    return f"{_num(w.value)} / {_num(w.limit)} <small>({_e(w.quantity)})</small>"


def _table(outcomes: list[Outcome], spec_url: str) -> str:
    rows = "".join(
        f'<tr><td><a href="#req-{_e(o.requirement.id.lower())}">{_e(o.requirement.id)}</a>'
        f"</td><td>{_level(o.requirement.level)}</td><td>{_badge(o.status)}</td>"
        f'<td class="num">{_worst(o)}</td><td>{_e(o.requirement.title)} '
        f'<a href="{_e(spec_link(spec_url, o.requirement.id))}" title="the spec text">'
        f"spec</a></td></tr>"
        for o in outcomes
    )
    return (
        '<table class="requirements"><tr><th>ID</th><th>level</th><th>status</th>'
        f"<th>worst / limit</th><th>title</th></tr>{rows}</table>"
    )


def _case(case: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(key)}</th><td><code>{_e(value)}</code></td></tr>"
        for key, value in case.items()
    )
    return f'<table class="meta case">{rows}</table>'


def _measurements(o: Outcome) -> str:
    def order(m: Measurement) -> tuple[bool, float]:
        ratio = m.value / m.limit if m.limit > 0 else m.value
        return (bool(m.passed), -ratio if not math.isnan(ratio) else -math.inf)

    shown = sorted(o.measurements, key=order)[:MEASUREMENTS_SHOWN]
    rows = "".join(
        f'<tr><td>{_e(m.quantity)}</td><td class="num">{_num(m.value)}</td>'
        f'<td class="num">{_num(m.limit)}</td><td>{_badge(PASSED if m.passed else FAILED)}</td>'
        f"<td><code>{_e(_short(m.case))}</code><br><small>{_e(m.message)}</small></td></tr>"
        for m in shown
    )
    rest = len(o.measurements) - len(shown)
    more = (
        f'<p class="note">{rest} more measurements, within their limits, are in the JSON '
        "report (--report).</p>"
        if rest
        else ""
    )
    return (
        f"<table><tr><th>quantity</th><th>value</th><th>limit</th><th></th><th>case</th>"
        f"</tr>{rows}</table>{more}"
    )


def _short(case: dict[str, Any], limit: int = 160) -> str:
    text = ", ".join(f"{k}={v}" for k, v in case.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reproduce(report: dict[str, Any], o: Outcome, dtypes: list[str]) -> str:
    """The command that runs `o`'s requirement again on the run's cases; `dtypes` are the
    run's chosen dtypes where ``--dtype`` restricted them (else empty)."""
    words = [
        "zeros-conformance",
        "run",
        "--backend",
        report["backend"]["target"],
        "--seed",
        str(report["seed"]),
        "--only",
        o.requirement.id,
    ]
    if report["profile"] == "quick":
        words.append("--quick")
    for dtype in dtypes:
        words += ["--dtype", dtype]
    return shlex.join(words)


def _card(o: Outcome, report: dict[str, Any], spec_url: str, dtypes: list[str]) -> str:
    bad = o.status in NOT_CONFORMING
    kind = "bad" if bad else o.status if o.status in (XFAIL, XPASS) else ""
    parts = [
        f"<p>{_level(o.requirement.level)} feature <code>{_e(o.requirement.feature)}"
        f'</code>, {o.seconds:.2f} s. <a href="{_e(spec_link(spec_url, o.requirement.id))}">'
        f"The spec text of {_e(o.requirement.id)}</a>.</p>"
    ]
    if o.expected_failure is not None:
        parts.append(
            f'<p class="reason">Listed as an expected failure: {_e(o.expected_failure)}</p>'
        )
    if o.message:
        parts.append(f"<p>{_e(o.message)}</p>")
    failure = o.failure
    if failure is not None:
        parts.append(
            f"<h4>The failing case</h4><p>{_e(failure.quantity)} "
            f"<b>{_num(failure.value)}</b> against the limit {_num(failure.limit)}: "
            f"{_e(failure.message)}</p>{_case(failure.case)}"
            f"<p>Reproduce: <code>{_e(_reproduce(report, o, dtypes))}</code></p>"
        )
        rows = failure.details.get("row_errors")
        if rows:
            parts.append(
                "<h4>Error along the sequence</h4>"
                + _figure(
                    lambda: _plots.row_errors(
                        [float(x) for x in rows],
                        failure.limit,
                        rows_per_entry=failure.details["rows_per_entry"],
                        title=f"{o.requirement.id}: the failing case",
                    ),
                    f"{o.requirement.id}: error of each output row",
                )
            )
    if o.measurements:
        parts.append("<h4>Measurements</h4>" + _measurements(o))
    opened = " open" if bad or o.status == XPASS else ""
    return (
        f'<details id="req-{_e(o.requirement.id.lower())}" class="{kind}"{opened}>'
        f"<summary>{_badge(o.status)} <b>{_e(o.requirement.id)}</b> "
        f"{_e(o.requirement.title)}</summary>{''.join(parts)}</details>"
    )


def _figures(outcomes: list[Outcome]) -> str:
    why = _plots.missing()
    if why is not None:
        return (
            f'<p class="note" id="no-figures">No figures in this report: {_e(why)}. The '
            "numbers they would show are in the tables.</p>"
        )
    parts = []
    panels = _plots.scaling_panels(outcomes)
    if panels:
        parts.append(
            "<h3>Time and memory as N grows (ZS-ON-*)</h3>"
            + _figure(lambda: _plots.scaling(panels), "scaling of time and memory")
        )
    series = _plots.dtype_series(outcomes)
    if series:
        parts.append(
            "<h3>Error against tolerance by dtype (ZS-ACC-*, ZS-DTYPE-HALF)</h3>"
            + _figure(lambda: _plots.errors_by_dtype(series), "errors by dtype")
        )
    return "".join(parts) or '<p class="note">No requirement with figures ran.</p>'


def render(
    ctx: Context,
    outcomes: list[Outcome],
    seconds: float,
    *,
    strict_xfails: bool = False,
    spec_url: str = SPEC_URL,
) -> str:
    """The HTML report of a finished run, as text (UTF-8 when written).

    Parameters
    ----------
    ctx : the run's context (backend, target, profile, seed).
    outcomes : the outcome of every requirement that ran, in spec order.
    seconds : the duration of the run.
    strict_xfails : whether an xpass fails the run (``--strict-xfails``).
    spec_url : base of the links to the spec; each requirement links to
        ``spec_url#zs-...``, the lowercase ID.

    Returns
    -------
    str : the page, one self-contained HTML document.
    """
    report = to_json(ctx, outcomes, seconds, strict_xfails=strict_xfails)
    verdict = "conforms" if report["exit_code"] == 0 else "does not conform"
    order = sorted(outcomes, key=lambda o: o.status not in (*NOT_CONFORMING, XPASS, XFAIL))
    chosen = [] if set(ctx.dtypes) == set(usable_dtypes(ctx.backend)) else list(ctx.dtypes)
    cards = "".join(_card(o, report, spec_url, chosen) for o in order)
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ZeroS conformance: {_e(report['backend']['name'])} {verdict}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"{_summary(report, outcomes, seconds)}"
        f"<h2>Requirements</h2>{_table(outcomes, spec_url)}"
        f"<h2>Figures</h2>{_figures(outcomes)}"
        f"<h2>Each requirement</h2>{cards}"
        "</body></html>\n"
    )
