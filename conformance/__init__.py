"""zeros_conformance: the conformance suite for ZeroS backends.

The public face, for backend authors, our own tools (`zeros-bench`) and tests:

- running the suite: `run` (every requirement in spec order) and `Session` (one at a time, as
  the pytest plugin does), on a `Context` (the backend, its target, profile, seed), with the
  `Limits` of the requirements that `grows` names (blocked once one of `BLOCKERS` failed);
  each requirement ends as an `Outcome` whose status is one of `STATUSES`, and `exit_code`
  says whether the run conforms;
- the comparison of spec 7.1: `compare` an output with the reference relative to
  `output_scale`, within the `TOLERANCE` of the dtype;
- the requirements of the spec (`load_requirements`, `requirement`) and the checks registered
  for them (`CHECKS`);
- `protocol`: the backend protocol of spec 10 (`protocol.Backend`), with one accessor per
  optional attribute and tuning attribute, which the suite, the bench and the reports use;
- `registry.load` finds a backend by name, ``module:attr`` or ``file.py:attr``;
  `xfails.load` reads a list of requirements expected to fail; `options.open_session` makes
  the session of a run from its options, for the command line and the pytest plugin alike;
- `html_report.render` writes the HTML report of a run.

Modules whose names start with an underscore are private.
"""

from . import html_report, options, protocol, registry, xfails
from ._compare import TOLERANCE, Comparison, compare, output_scale
from ._guard import Limits
from ._harness import CHECKS, Check, Context, Measurement
from .requirements import Requirement, load_requirements, requirement
from .runner import Outcome, exit_code, grows
from .session import BLOCKERS, Session, run
from .status import (
    BLOCKED,
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    NOT_CLAIMED,
    NOT_CONFORMING,
    PASSED,
    STATUSES,
    XFAIL,
    XPASS,
)

__all__ = [
    "BLOCKED",
    "BLOCKERS",
    "CHECKS",
    "ERROR",
    "FAILED",
    "NOT_APPLICABLE",
    "NOT_CLAIMED",
    "NOT_CONFORMING",
    "PASSED",
    "STATUSES",
    "TOLERANCE",
    "XFAIL",
    "XPASS",
    "Check",
    "Comparison",
    "Context",
    "Limits",
    "Measurement",
    "Outcome",
    "Requirement",
    "Session",
    "compare",
    "exit_code",
    "grows",
    "html_report",
    "load_requirements",
    "options",
    "output_scale",
    "protocol",
    "registry",
    "requirement",
    "run",
    "xfails",
]
