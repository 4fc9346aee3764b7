"""pytest plugin: ``pytest --zeros-backend=NAME`` runs the conformance suite inside pytest.

Each requirement becomes one test, ``test_requirement[ZS-...]``. Unclaimed features and
not-applicable requirements are skipped with the reason; a failed SHOULD requirement is
reported as xfail, a failed (or blocked) MUST requirement fails. Requirements listed with
``--zeros-xfails FILE`` are xfail when they fail, and pass (fail with
``--zeros-strict-xfails``) when they pass. Checks that grow with N run
in a child process with the limits of ``zeros-conformance run``. ``--zeros-html FILE`` writes
the HTML report of the requirements that ran when the session ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["pytest_addoption", "pytest_configure"]

SUITE = Path(__file__).with_name("suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zeros", "ZeroS conformance")
    group.addoption("--zeros-backend", metavar="BACKEND",
                    help="run the ZeroS conformance suite on this backend (name, module:attr "
                         "or file.py:attr)")
    group.addoption("--zeros-profile", choices=("quick", "full"), default="quick",
                    help="conformance profile (default quick)")
    group.addoption("--zeros-seed", type=int, default=0, help="seed of the drawn cases")
    group.addoption("--zeros-memory-limit", type=float, metavar="GIB",
                    help="memory cap of each check that grows with N (default: 8 GiB, or half "
                         "the available memory if less)")
    group.addoption("--zeros-time-limit", type=float, metavar="SECONDS",
                    help="wall-clock limit of each check that grows with N (default 600)")
    group.addoption("--zeros-xfails", metavar="FILE",
                    help="requirement IDs expected to fail (one a line, reason after #): "
                         "reported as xfail, or as xpass when they pass")
    group.addoption("--zeros-strict-xfails", action="store_true",
                    help="a listed requirement that passes fails its test")
    group.addoption("--zeros-html", metavar="FILE",
                    help="write the HTML report of the requirements that ran here (its folder "
                         "must exist)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): requirement IDs of the ZeroS spec")
    if config.getoption("--zeros-backend", default=None):
        config.args.append(str(SUITE))
