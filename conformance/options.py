"""The options of a run, as ``zeros-conformance run`` and the pytest plugin take them, and the
one builder that turns them into a `Session` for both.

`open_session` checks every option it can before it loads the backend (seed, profile,
requirement IDs, limits, the list of expected failures), then loads the backend and checks the
dtypes against its claims. A wrong option raises `OptionError`, a backend that cannot be loaded
or claims no known dtype `BackendError`; each front end turns them into its own exit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import protocol, registry, xfails
from ._guard import GIB, Limits
from ._harness import Context
from .requirements import load_requirements
from .session import Session

__all__ = ["PROFILES", "SEEDS", "BackendError", "OptionError", "RunOptions", "cli_flag",
           "open_session"]

PROFILES = ("quick", "full")
"""The profiles of a run: smaller sizes, or those of the spec."""
SEEDS = 2**32
"""Seeds are 0 .. SEEDS - 1: what NumPy's generators take, and exact in any JSON reader."""


@dataclass(frozen=True)
class RunOptions:
    """What a run is made of, as a user gives it."""

    backend: str
    """Registered name, ``module:attr`` or ``path/to/file.py:attr``."""
    profile: str = "full"
    seed: int = 0
    dtypes: tuple[str, ...] = ()
    """The claimed dtypes to test; empty: all of them."""
    only: tuple[str, ...] = ()
    """The requirement IDs to run; empty: all of them."""
    xfails: str | Path | None = None
    """A file of requirements expected to fail (`xfails.load`)."""
    strict_xfails: bool = False
    """A listed requirement that passes fails the run."""
    memory_limit: float | None = None
    """GiB of heap for each check that grows with N; None: `Limits`' default."""
    time_limit: float | None = None
    """Seconds for each check that grows with N; None: `Limits`' default."""


class OptionError(ValueError):
    """An option that cannot make a run; the message names the option as the front end
    spells it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        """The field of `RunOptions`."""


class BackendError(Exception):
    """The backend cannot be loaded, or claims no dtype the suite knows."""


def cli_flag(option: str) -> str:
    """How ``zeros-conformance run`` spells the field `option` of `RunOptions`."""
    return "--" + {"dtypes": "dtype", "profile": "quick"}.get(option, option).replace("_", "-")


def _limits(options: RunOptions, flag: Callable[[str], str]) -> Limits:
    given = [x for x in (options.memory_limit, options.time_limit) if x is not None]
    if not all(0 < x < math.inf for x in given):
        raise OptionError("memory_limit", f"{flag('memory_limit')} and {flag('time_limit')} "
                                          "must be positive and finite")
    default = Limits()
    memory = options.memory_limit
    return Limits(default.memory_bytes if memory is None else int(memory * GIB),
                  default.seconds if options.time_limit is None else options.time_limit)


def open_session(options: RunOptions, *, flag: Callable[[str], str] = cli_flag) -> Session:
    """The session of a run: options checked, backend loaded, dtypes checked against its
    claims.

    Parameters
    ----------
    options : RunOptions
        The run's options.
    flag : callable, optional
        ``flag(field)``, how the front end spells an option in its messages (default: the
        command line's, `cli_flag`).

    Returns
    -------
    Session
        With the context (backend, target, profile, seed, dtypes), the limits of the checks
        that grow with N, the expected failures, the requirements to run and whether expected
        failures are strict.

    Raises
    ------
    OptionError
        A wrong option; all but the dtypes are checked before the backend is loaded.
    BackendError
        The backend cannot be loaded, or claims no known dtype.
    """
    if options.profile not in PROFILES:
        raise OptionError("profile", f"the profile must be one of {', '.join(PROFILES)}; "
                                     f"got {options.profile!r}")
    if not 0 <= options.seed < SEEDS:
        raise OptionError("seed", f"{flag('seed')}: must be in 0..{SEEDS - 1}; "
                                  f"got {options.seed}")
    unknown = sorted(set(options.only) - {r.id for r in load_requirements()})
    if unknown:
        raise OptionError("only", f"{flag('only')}: unknown requirement IDs {unknown}")
    limits = _limits(options, flag)
    try:
        expected = xfails.load(options.xfails) if options.xfails else {}
    except (OSError, ValueError) as exc:
        raise OptionError("xfails", f"{flag('xfails')}: {exc}") from exc
    try:
        backend = registry.load(options.backend)
    except registry.BackendLoadError as exc:
        raise BackendError(f"cannot load backend: {exc}") from exc
    claimed = protocol.usable_dtypes(backend)
    if not claimed:
        why = [p for p in protocol.protocol_problems(backend) if p.startswith("`dtypes`")]
        raise BackendError(f"backend {options.backend!r} claims no known dtype "
                           f"({'; '.join(why)})")
    unclaimed = sorted(set(options.dtypes) - set(claimed))
    if unclaimed:
        raise OptionError("dtypes", f"{flag('dtypes')} {', '.join(unclaimed)} is not claimed "
                                    f"by the backend (it claims {', '.join(claimed)})")
    chosen = tuple(d for d in claimed if not options.dtypes or d in options.dtypes)
    ctx = Context(backend, target=options.backend, profile=options.profile, seed=options.seed,
                  dtypes=chosen)
    return Session(ctx, limits, expected, only=options.only,
                   strict_xfails=options.strict_xfails)
