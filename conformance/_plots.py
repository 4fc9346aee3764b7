"""The figures of the HTML report, as PNG bytes (matplotlib, optional: the ``bench`` extra).

The drawing functions (`scaling`, `errors_by_dtype`, `row_errors`) take plain numbers and
return one PNG each; `scaling_panels` and `dtype_series` pick those numbers from a run's
outcomes (the cases ZS-ON-* record: sizes, seconds, bytes; the errors of ZS-ACC-* and
ZS-DTYPE-HALF by dtype). Figures are drawn on `matplotlib.figure.Figure` objects, never
through pyplot, so that no global state or interactive backend is touched. `missing()` says
why there are no figures (matplotlib is not installed), or None.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._compare import TOLERANCE
from .runner import Outcome
from .status import BLOCKED, NOT_APPLICABLE, NOT_CLAIMED

__all__ = [
    "Dots",
    "Scaling",
    "dtype_series",
    "errors_by_dtype",
    "missing",
    "row_errors",
    "scaling",
    "scaling_panels",
]

DTYPE_ORDER = ("float64", "float32", "float16", "bfloat16")
FLOOR = 1e-18
"""Errors below this (exact zeros included) are drawn at it on the log axes."""
PASS, FAIL, LIMIT, REFERENCE = "#2e7d32", "#c62828", "#c62828", "#9e9e9e"
DTYPE_IDS = ("ZS-ACC-REFERENCE", "ZS-ACC-GOLDEN", "ZS-DTYPE-HALF")
"""Requirements whose errors the figure of errors by dtype shows."""


def missing() -> str | None:
    """None when matplotlib can draw the figures, otherwise why not."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        return (
            f"matplotlib is not installed ({exc}); install the bench extra, pip install "
            "'zeros-attention-spec[bench]', for the figures"
        )
    return None


def _figure(width: float, height: float, panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


@dataclass(frozen=True)
class Scaling:
    """One panel of `scaling`: a quantity measured at growing sizes, with its limit.

    x, y: the sizes and the measured values (at least two). limit: the largest allowed y at
    each x (None where the requirement bounds a ratio only). reference: draw the linear and
    quadratic growth through the first point. passed: the requirement's verdict. log_y: a
    logarithmic value axis (else linear, from 0).
    """

    title: str
    xlabel: str
    ylabel: str
    x: Sequence[float]
    y: Sequence[float]
    passed: bool
    limit: Sequence[float] | None = None
    reference: bool = True
    log_y: bool = True


def scaling(panels: Sequence[Scaling]) -> bytes:
    """Log-log panels side by side: measured values, the limit, slopes 1 and 2."""
    fig, axes = _figure(3.6 * len(panels), 3.2, len(panels))
    for ax, panel in zip(axes, panels):
        color = PASS if panel.passed else FAIL
        ax.plot(panel.x, panel.y, "o-", color=color, label="measured", zorder=3)
        if panel.reference and panel.y[0] > 0:
            x0, y0 = panel.x[0], panel.y[0]
            for slope, style in ((1, "--"), (2, ":")):
                ax.plot(
                    panel.x,
                    [y0 * (x / x0) ** slope for x in panel.x],
                    style,
                    color=REFERENCE,
                    label=("linear" if slope == 1 else "quadratic"),
                )
        if panel.limit is not None:
            ax.plot(
                panel.x, panel.limit, "_-", color=LIMIT, linewidth=1.5, markersize=14, label="limit"
            )
        ax.set_xscale("log", base=2)
        if panel.log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, max([*panel.y, *(panel.limit or ())]) * 1.15)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    return _png(fig)


@dataclass(frozen=True)
class Dots:
    """Errors of one requirement's cases: (dtype, error) pairs and their tolerances."""

    label: str
    points: Sequence[tuple[str, float]]
    tolerance: dict[str, float]


def errors_by_dtype(series: Sequence[Dots]) -> bytes:
    """Every case's error (log scale) in a column per dtype, each dtype's tolerance a bar."""
    dtypes = [d for d in DTYPE_ORDER if any(d == p[0] for s in series for p in s.points)]
    fig, (ax,) = _figure(7.5, 3.6)
    finite = [e for s in series for _, e in s.points if math.isfinite(e)]
    top = max([FLOOR, *finite, *(t for s in series for t in s.tolerance.values())]) * 10
    width = 0.7 / max(1, len(series))
    for j, dots in enumerate(series):
        labelled = False
        for column, dtype in enumerate(dtypes):
            errors = [e for d, e in dots.points if d == dtype]
            if not errors:
                continue
            center = column - 0.35 + width * (j + 0.5)
            spread = [
                center + width * 0.6 * (((i * 0.618) % 1.0) - 0.5) for i in range(len(errors))
            ]
            shown = [min(max(e, FLOOR), top) if not math.isnan(e) else top for e in errors]
            bad = [not (e <= dots.tolerance.get(dtype, math.inf)) for e in errors]
            ax.scatter(
                [x for x, b in zip(spread, bad) if not b],
                [y for y, b in zip(shown, bad) if not b],
                s=12,
                alpha=0.7,
                color=f"C{j}",
                label=None if labelled else dots.label,
            )
            labelled = True
            ax.scatter(
                [x for x, b in zip(spread, bad) if b],
                [y for y, b in zip(shown, bad) if b],
                s=28,
                marker="x",
                color=FAIL,
            )
    for column, dtype in enumerate(dtypes):
        tolerance = next((s.tolerance[dtype] for s in series if dtype in s.tolerance), None)
        if tolerance is not None:
            ax.hlines(tolerance, column - 0.42, column + 0.42, color=LIMIT, linewidth=2)
            ax.annotate(
                f"tolerance {tolerance:g}",
                (column + 0.42, tolerance),
                fontsize=7,
                color=LIMIT,
                ha="right",
                va="bottom",
            )
    ax.set_xticks(range(len(dtypes)), dtypes)
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 3, top * 3)
    ax.set_ylabel("scale-relative error (spec 7.1)")
    ax.set_title(
        "error of every case against the tolerance of its dtype (red x: past it)", fontsize=10
    )
    ax.grid(True, axis="y", which="major", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def row_errors(
    errors: Sequence[float], tolerance: float, *, rows_per_entry: int = 1, title: str = ""
) -> bytes:
    """The error of each output row along the sequence, the tolerance, and where it starts."""
    fig, (ax,) = _figure(7.5, 3.0)
    finite = [e for e in errors if math.isfinite(e)]
    top = max([tolerance * 10, *finite]) * 10
    rows = [j * rows_per_entry for j in range(len(errors))]
    shown = [top if not math.isfinite(e) else max(e, FLOOR) for e in errors]
    ax.step(rows, shown, where="post", color="C0", linewidth=1, label="error of the row")
    blown = [(r, y) for r, y, e in zip(rows, shown, errors) if not math.isfinite(e)]
    if blown:
        ax.scatter(*zip(*blown), color=FAIL, marker="^", s=18, label="not finite", zorder=3)
    ax.axhline(
        tolerance, color=LIMIT, linestyle="--", linewidth=1, label=f"tolerance {tolerance:g}"
    )
    start = next((r for r, e in zip(rows, errors) if not e <= tolerance), None)
    if start is not None:
        ax.axvline(start, color=FAIL, linewidth=1)
        ax.annotate(
            f" past the tolerance from row {start}",
            (start, tolerance),
            color=FAIL,
            fontsize=8,
            va="bottom",
        )
    ax.set_yscale("log")
    ax.set_xlim(0, max(1, len(errors) * rows_per_entry))
    per = f" (max over runs of {rows_per_entry} rows)" if rows_per_entry > 1 else ""
    ax.set_xlabel(f"output row t{per}")
    ax.set_ylabel("scale-relative error")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


# -- what to draw from a run's outcomes ------------------------------------------------------


def _g(x: float) -> str:
    return f"{float(x):.3g}"


def _by_id(outcomes: Iterable[Outcome]) -> dict[str, Outcome]:
    return {o.requirement.id: o for o in outcomes}


def _ran(o: Outcome | None) -> bool:
    return o is not None and o.status not in (BLOCKED, NOT_CLAIMED, NOT_APPLICABLE)


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def scaling_panels(outcomes: Iterable[Outcome]) -> list[Scaling]:
    """The panels of the scaling figure from the cases ZS-ON-* record (sizes, seconds,
    bytes); requirements that did not run or measured nothing finite are left out."""
    found = _by_id(outcomes)
    panels = []
    time_ = found.get("ZS-ON-TIME")
    if _ran(time_) and time_.measurements and "seconds" in time_.measurements[0].case:
        m = time_.measurements[0]
        if _finite(*m.case["seconds"]):
            panels.append(
                Scaling(
                    f"ZS-ON-TIME: ratio {_g(m.value)} (limit {_g(m.limit)})",
                    "N (tokens)",
                    "seconds per call (min)",
                    m.case["N"],
                    m.case["seconds"],
                    bool(m.passed),
                )
            )
    memory = found.get("ZS-ON-MEMORY")
    if _ran(memory) and memory.measurements and "peak_bytes" in memory.measurements[0].case:
        growth, *sizes = memory.measurements
        peaks = [b / 2**20 for b in growth.case["peak_bytes"]]
        if _finite(*peaks) and len(sizes) == len(peaks):
            panels.append(
                Scaling(
                    f"ZS-ON-MEMORY: ratio {_g(growth.value)} (limit {_g(growth.limit)})",
                    "N (tokens)",
                    "peak MiB beyond the inputs",
                    growth.case["N"],
                    peaks,
                    all(m.passed for m in memory.measurements),
                    limit=[m.limit for m in sizes],
                )
            )
    decode = found.get("ZS-ON-DECODE")
    if _ran(decode) and decode.measurements and "seconds" in decode.measurements[0].case:
        m = decode.measurements[0]
        if _finite(*m.case["seconds"]):
            short = m.case["seconds"][0]
            panels.append(
                Scaling(
                    f"ZS-ON-DECODE: ratio {_g(m.value)} (limit {_g(m.limit)})",
                    "context (tokens)",
                    "seconds per decode step",
                    m.case["context"],
                    m.case["seconds"],
                    bool(m.passed),
                    limit=[short * m.limit] * 2,
                    reference=False,
                )
            )
    state = found.get("ZS-ON-STATE")
    if _ran(state) and state.measurements and "bytes" in state.measurements[0].case:
        first = state.measurements[0].case
        sizes = [first["bytes"][0], *(m.case["bytes"][1] for m in state.measurements)]
        if _finite(*sizes):
            allowed = max(sizes[0], 1024) * state.measurements[0].limit
            panels.append(
                Scaling(
                    "ZS-ON-STATE: bytes held by the state",
                    "state after (tokens)",
                    "bytes",
                    _state_tokens(state),
                    sizes,
                    all(m.passed for m in state.measurements),
                    limit=[allowed] * len(sizes),
                    reference=False,
                    log_y=False,
                )
            )
    return panels


def _state_tokens(state: Outcome) -> list[float]:
    """Tokens summarised by each state ZS-ON-STATE measured (1k, 1k + 256 steps, the long)."""
    tokens = []
    for label in (
        state.measurements[0].case["states"][0],
        *(m.case["states"][1] for m in state.measurements),
    ):
        words = label.split()
        tokens.append(float(words[0]) + (float(words[3]) if "then" in words else 0.0))
    return tokens


def dtype_series(outcomes: Iterable[Outcome]) -> list[Dots]:
    """The errors of ZS-ACC-* and ZS-DTYPE-HALF cases by dtype, one series per requirement."""
    series = []
    for o in outcomes:
        if o.requirement.id not in DTYPE_IDS or not _ran(o):
            continue
        points = [
            (m.case["dtype"], float(m.value))
            for m in o.measurements
            if m.quantity == "error" and m.case.get("dtype") in TOLERANCE
        ]
        if points:
            series.append(Dots(o.requirement.id, points, {d: TOLERANCE[d] for d, _ in points}))
    return series
