"""Output of a run: the machine it ran on, the terminal table and the log-log plot."""

from __future__ import annotations

from typing import Any

import numpy as np

import zeros_machine
from zeros_conformance import protocol

from .varlen import varlen_lines

__all__ = ["machine", "machine_line", "plot", "table"]


def machine(backend: Any) -> dict[str, Any]:
    """The machine (`zeros_machine.describe`) and the backend's name and worker threads."""
    return {**zeros_machine.describe(), "backend": protocol.name(backend),
            "backend_workers": protocol.workers(backend) or "auto"}


def machine_line(info: dict[str, Any]) -> str:
    return (f"machine: {zeros_machine.line(info)}; backend {info['backend']} "
            f"workers={info['backend_workers']}")


def table(report: dict) -> str:
    """The terminal table of a report."""
    lines = [machine_line(report["machine"]),
             f"float32 GEMM rate: {report['gemm_flops'] / 1e9:.1f} GFLOP/s; softmax: "
             f"{report['softmax']}"]
    head = (f"{'config':<19} {'N':>6} {report['backend']:>9} {'zeros_ref':>9} {'softmax':>9} "
            f"{'GFLOP/s':>8} {'%GEMM':>6} {'%prod':>6} {'/soft':>7} {'ref/be':>6} "
            f"{'ref/1w':>6} {'t8N/N':>6} {'peakMB':>8} {'m8N/N':>6}")
    lines += ["times in ms (min over repeats); GFLOP/s on the chunked form's count; %prod: "
              "share of the form's products timed alone; zeros_ref timed with 1 BLAS thread; "
              "ref/1w: against the backend on one worker thread",
              head]
    for name, rows in report["configs"].items():
        for row in rows:
            def opt(key: str, row: dict = row) -> str:
                return f"{row[key]:6.2f}" if key in row else f"{'-':>6}"

            def percent(key: str, row: dict = row) -> str:
                return f"{100 * row[key]:5.1f}%" if key in row else f"{'-':>6}"

            lines.append(
                f"{name:<19} {row['n']:>6} {row['backend']['min'] * 1e3:9.2f} "
                f"{row['reference']['min'] * 1e3:9.2f} {row['softmax']['min'] * 1e3:9.1f} "
                f"{row['flop_rate'] / 1e9:8.1f} {100 * row['gemm_share']:5.1f}% "
                f"{percent('product_share')} "
                f"{row['vs_softmax']:7.4f} {row['reference_vs_backend']:6.2f} "
                f"{opt('reference_vs_one_worker')} {opt('time_8n_ratio')} "
                f"{row['peak_bytes'] / 2**20 if 'peak_bytes' in row else float('nan'):8.2f} "
                f"{opt('memory_8n_ratio')}")
    firsts = [f"N={row['n']} {row['backend']['first'] * 1e3:.0f}"
              for rows in report["configs"].values() for row in rows
              if "first" in row["backend"]]
    if firsts:
        lines.append("first call of the backend in ms (compilation included, where it "
                     "compiles): " + ", ".join(firsts))
    counted = [(name, row) for name, rows in report["configs"].items() for row in rows
               if row.get("dispatch")]
    if counted:
        lines.append("torch dispatch per forward call (ops / host syncs), chunk "
                     f"{report['chunk_size']}: " + ", ".join(
                         f"N={row['n']} {row['dispatch']['ops']} / {row['dispatch']['syncs']}"
                         for _, row in counted))
    trained = [row for _, row in counted if "train_peak_bytes" in row]
    if trained:
        lines.append("forward+backward peak allocated per token and head (x the bytes of q, k, "
                     "v, logits and output): " + ", ".join(
                         f"N={row['n']} {_per_token_head(row) / 1024:.2f} kB "
                         f"({row['train_peak_bytes'] / row['train_call_bytes']:.1f}x)"
                         for row in trained))
    decode = report["decode"]
    if decode is not None:
        steps = ", ".join(f"{c} tokens {t['min'] * 1e6:.0f} us"
                          for c, t in decode["times"].items())
        lines.append(f"decode step (bh={decode['bh']}, one token with state): {steps}; "
                     f"long/short {decode['ratio']:.3f}")
    if report.get("varlen"):
        lines += varlen_lines(report["varlen"])
    return "\n".join(lines)


def _per_token_head(row: dict) -> float:
    return row["train_peak_bytes"] / (row["n"] * row["bh"])


def plot(report: dict, path: str) -> None:
    """Log-log time vs N of the backend, the reference and softmax, with slopes 1 and 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for rows in report["configs"].values() for r in rows]
    rows = sorted({r["n"]: r for r in rows}.values(), key=lambda r: r["n"])
    ns = np.array([r["n"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, label in (("backend", f"ZeroS {report['backend']}"), ("reference", "zeros_ref"),
                       ("softmax", "softmax (" + report["softmax"].split(" (")[0] + ")")):
        ax.loglog(ns, [r[key]["min"] for r in rows], "o-", label=label)
    anchor = rows[0]["backend"]["min"]
    for slope, color in ((1, "gray"), (2, "black")):
        ax.loglog(ns, anchor * (ns / ns[0]) ** slope, "--", color=color, linewidth=1,
                  label=f"ideal slope {slope}")
    ax.set_xlabel("N (tokens)")
    ax.set_ylabel("time (s), min over repeats")
    mode = "causal" if rows[0].get("causal", True) else "bidirectional"
    ax.set_title(f"{mode} attention, B*H={rows[0]['bh']}, D={rows[0]['d']}, Dv={rows[0]['dv']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
