"""The correctness gate: a backend that does not conform gets no timings."""

from __future__ import annotations

from typing import Any

from zeros_conformance import NOT_CONFORMING, Context, Limits, run

__all__ = ["correctness_gate"]


def correctness_gate(backend: Any, target: str = "") -> list[str]:
    """Failures of `backend` in the quick conformance run: one explanation per failed MUST
    requirement of the claimed features (empty when it conforms).

    `target` is how the backend was named (registered name, module:attr or file.py:attr); the
    checks that grow with N load it from there in a child process.
    """
    outcomes = run(Context(backend, target=target, profile="quick"), limits=Limits())
    return [o.explain() for o in outcomes if o.required and o.status in NOT_CONFORMING]
