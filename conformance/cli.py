"""``zeros-conformance``: run the suite on a backend, list backends and requirements.

Exit status of ``run``: 0 when every MUST requirement of the claimed features passes, 1 when
any fails, 2 when the backend cannot be loaded or the arguments are wrong (checked before any
requirement runs: seeds, dtypes, requirement IDs, limits and the folders of the reports). The
JSON report is rewritten before every requirement, so a run that dies leaves the outcomes so far
and the requirement that was running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import golden, golden_layer, golden_varlen, html_report, junit, protocol, registry
from ._guard import GIB, Limits
from ._harness import Context
from .options import SEEDS, BackendError, OptionError, RunOptions, open_session
from .protocol import DTYPES
from .report import markdown, summary_table, to_json
from .requirements import Requirement, load_requirements
from .runner import Outcome
from .status import (
    BLOCKED,
    NOT_APPLICABLE,
    NOT_CLAIMED,
    NOT_CONFORMING,
    PASSED,
    XFAIL,
    XPASS,
)

__all__ = ["main"]

_GOLDEN_SETS = {"attention": golden, "layer": golden_layer, "varlen": golden_varlen}
"""The golden sets: modules with CASES, default_directory, regenerate and verify."""

REPORTS = ("report", "markdown", "html", "junit")
"""The options that name a report file to write."""


def _seed(text: str) -> int:
    """An argparse type: a seed in 0 .. SEEDS - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < SEEDS:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEEDS - 1}; got {value}")
    return value


def _check_output(option: str, path: Path) -> str | None:
    """Why a report cannot be written to `path`, or None. The folder is not created: a
    mistyped folder is more likely than one meant to be new."""
    folder = path.parent
    if path.is_dir():
        return f"--{option} {path}: is a folder, not a file"
    if not folder.is_dir():
        return f"--{option} {path}: the folder {folder} does not exist (create it first)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--{option} {path}: the folder {folder} is not writable"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeros-conformance", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="check a backend against every requirement",
                        epilog="Wrong arguments exit with status 2 before any requirement runs; "
                               "the folder of each report (--report, --markdown, --html, "
                               "--junit) must exist: it is not created.")
    go.add_argument("--backend", required=True,
                    help="registered name, module:attr or path/to/file.py:attr")
    go.add_argument("--quick", action="store_true", help="the quick profile (smaller sizes)")
    go.add_argument("--report", type=Path,
                    help="write the JSON report here (rewritten before every requirement)")
    go.add_argument("--markdown", type=Path, help="write a Markdown report here")
    go.add_argument("--html", type=Path,
                    help="write an HTML report here: one self-contained file, with plots "
                         "where matplotlib is installed")
    go.add_argument("--junit", type=Path, metavar="FILE",
                    help="write JUnit XML here, one test case per requirement ID, for the "
                         "test reports of CI services (GitLab, Jenkins, GitHub)")
    go.add_argument("--spec-url", default=html_report.SPEC_URL, metavar="URL",
                    help="where the HTML report links each requirement's text: URL#zs-... "
                         "(default %(default)r, the spec page of the documentation site "
                         "relative to a report at the site's root)")
    go.add_argument("--dtype", action="append", choices=DTYPES,
                    help="test only these claimed dtypes (repeatable)")
    go.add_argument("--seed", type=_seed, default=0,
                    help=f"seed of every drawn case, 0..{SEEDS - 1} (default 0)")
    go.add_argument("--only", action="append", metavar="ID",
                    help="check only these requirement IDs (repeatable)")
    go.add_argument("--xfails", type=Path, metavar="FILE",
                    help="requirement IDs expected to fail, one a line with the reason after #: "
                         "listed failures are reported as xfail and do not fail the run")
    go.add_argument("--strict-xfails", action="store_true",
                    help="a listed requirement that passes (xpass) fails the run")
    default = Limits()
    go.add_argument("--memory-limit", type=float, metavar="GIB",
                    default=default.memory_bytes / GIB,
                    help="memory cap of each check that grows with N, in GiB (default "
                         "%(default).3g: 8, or half the available memory if less)")
    go.add_argument("--time-limit", type=float, metavar="SECONDS", default=default.seconds,
                    help="wall-clock limit of each check that grows with N (default %(default)g)")
    sub.add_parser("list", help="list the registered backends")
    sub.add_parser("requirements", help="list the requirement IDs of the spec")
    gold = sub.add_parser("golden", help="verify or regenerate the golden files")
    gold.add_argument("action", choices=["verify", "regenerate"])
    gold.add_argument("--set", choices=["all", *_GOLDEN_SETS], default="all",
                      help="which golden set (default all)")
    gold.add_argument("--dir", help="the set's directory (default: the package's); needs "
                                    "--set attention, layer or varlen")
    return parser


class _Progress:
    """Prints each requirement as it runs, and rewrites the JSON report before each one."""

    def __init__(self, ctx: Context, report: Path | None, *, strict_xfails: bool) -> None:
        self.ctx, self.report, self.strict_xfails = ctx, report, strict_xfails
        self.outcomes: list[Outcome] = []
        self.start = time.perf_counter()

    def write(self, running: str | None) -> None:
        if self.report is None:
            return
        seconds = time.perf_counter() - self.start
        partial = self.report.with_name(self.report.name + ".part")
        report = to_json(self.ctx, self.outcomes, seconds, running=running,
                         strict_xfails=self.strict_xfails)
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(self.report)

    def __call__(self, number: int, total: int, item: Outcome | Requirement) -> None:
        if isinstance(item, Outcome):
            self.outcomes.append(item)
            print(f" {item.status} ({item.seconds:.1f} s)", file=sys.stderr, flush=True)
        else:
            self.write(running=item.id)
            print(f"[{number:2d}/{total}] {item.id:22s}", end="", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for option in REPORTS:
        path = getattr(args, option)
        problem = None if path is None else _check_output(option, path)
        if problem:
            parser.error(problem)
    options = RunOptions(args.backend, profile="quick" if args.quick else "full",
                         seed=args.seed, dtypes=tuple(args.dtype or ()),
                         only=tuple(args.only or ()), xfails=args.xfails,
                         strict_xfails=args.strict_xfails, memory_limit=args.memory_limit,
                         time_limit=args.time_limit)
    try:
        session = open_session(options)
    except OptionError as exc:
        parser.error(str(exc))
    except BackendError as exc:
        print(f"zeros-conformance: {exc}", file=sys.stderr)
        return 2
    ctx = session.ctx
    print(f"zeros-conformance: backend {args.backend} ({protocol.name(ctx.backend)}), "
          f"dtypes {', '.join(ctx.dtypes)}, features {', '.join(sorted(ctx.features))}, "
          f"profile {ctx.profile}, seed {ctx.seed}; checks that grow with N run in a child "
          f"process capped at {session.limits.describe()}", file=sys.stderr)
    strict = session.strict_xfails
    progress = _Progress(ctx, args.report, strict_xfails=strict)
    outcomes = session.run(progress)
    seconds = time.perf_counter() - progress.start
    print(summary_table(outcomes))
    for o in outcomes:
        if o.status in NOT_CONFORMING or o.status == XPASS:
            print("\n" + o.explain())
    code = session.exit_code()
    listed = [o for o in outcomes if o.expected_failure is not None]
    if listed:
        print("\nexpected failures (--xfails):")
        for o in listed:
            print(f"  {o.requirement.id} {o.status}: {o.expected_failure}")

    def count(*statuses: str) -> int:
        return sum(o.status in statuses for o in outcomes)

    print(f"\n{count(PASSED)} passed, {count(*NOT_CONFORMING) - count(BLOCKED)} failed, "
          f"{count(BLOCKED)} blocked, {count(XFAIL)} xfail, {count(XPASS)} xpass, "
          f"{count(NOT_CLAIMED, NOT_APPLICABLE)} not claimed or not applicable in "
          f"{seconds:.1f} s: {'CONFORMS' if code == 0 else 'DOES NOT CONFORM'}")
    progress.write(running=None)
    if args.markdown:
        args.markdown.write_text(markdown(ctx, outcomes, seconds, strict_xfails=strict))
    if args.html:
        args.html.write_text(html_report.render(ctx, outcomes, seconds, strict_xfails=strict,
                                                spec_url=args.spec_url), encoding="utf-8")
    if args.junit:
        junit.write(to_json(ctx, outcomes, seconds, strict_xfails=strict), args.junit)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args, parser)
    if args.command == "list":
        for name, target in sorted(registry.available().items()):
            print(f"{name:16s} {target}")
        return 0
    if args.command == "requirements":
        for r in load_requirements():
            print(f"{r.id:22s} {r.level:6s} {r.feature:14s} {r.title}")
        return 0
    if args.dir and args.set == "all":
        parser.error("golden --dir needs one --set (attention, layer or varlen)")
    names = list(_GOLDEN_SETS) if args.set == "all" else [args.set]
    return max(_golden(args.action, _GOLDEN_SETS[name], args.dir) for name in names)


def _golden(action: str, catalogue: Any, directory: str | None) -> int:
    """``golden verify|regenerate`` of one set: 1 when its directory does not match its
    manifest."""
    root = Path(directory) if directory else catalogue.default_directory()
    if action == "regenerate":
        catalogue.regenerate(root)
        print(f"wrote {len(catalogue.CASES)} golden cases and their manifest to {root}")
    problems = catalogue.verify(root)
    for problem in problems:
        print(f"problem: {problem}")
    if not problems:
        print(f"ok: {root} matches its manifest")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
