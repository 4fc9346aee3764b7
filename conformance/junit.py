"""JUnit XML of a conformance run, for the test reporters of CI services.

``zeros-conformance run ... --junit FILE`` writes it. GitLab, Jenkins, GitHub Actions (with a
JUnit reporter action) and most CI services read this format and show a run like a test run:
one test case per requirement ID, grouped by the ID's family, red where the run fails.

The XML is built from the JSON report (`report.to_json`) with the standard library only.
Statuses map so that a reporter's red matches the run's exit code:

========================= ==================================================================
status                    test case
========================= ==================================================================
passed                    passed
failed, blocked (MUST)    ``<failure>``: the measured value, the limit and the quantity in
                          ``message``; the failing case's inputs as JSON in the text
error (MUST)              ``<error>``: the exception's type and message, and the arguments
                          of the backend's last call in the text
failed, error, blocked    ``<skipped message="SHOULD not met: ...">`` with the measurement: a
(SHOULD)                  SHOULD requirement does not fail the run, so it is not red
not claimed,              ``<skipped>`` with the reason
not applicable
xfail                     ``<skipped message="expected failure: REASON">``
xpass                     passed; a ``<failure>`` when the run used strict xfails
                          (``strict_xfails`` in the report), which makes an xpass fail it
========================= ==================================================================

A report of a run that had not ended (``complete: false``) gets one more test case, an
``<error>`` for the requirement that was ``running`` when the run stopped.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

__all__ = ["PACKAGE", "classname", "to_junit", "write"]

PACKAGE = "zeros_conformance"
"""The first part of every test case's class name."""
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot carry, even escaped (an exception's message may hold them)."""
_RAISED = re.compile(r"raised ([A-Za-z_][\w.]*)(?::\s*(.*))?", re.S)
"""The message of a measurement of an exception (`runner._raised`): type, then message."""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        value = json.dumps(value)
    return _NOT_XML.sub("\ufffd", str(value))


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "0.000"
    return f"{seconds:.3f}" if 0.0 <= seconds < float("inf") else "0.000"


def classname(requirement_id: str) -> str:
    """The class name of a requirement's test case: ``zeros_conformance.<family>``.

    The family is the ID's part after ``ZS-`` (``ZS-STAB-RANGE`` -> ``stab``), so that a
    reporter groups the definition, stability, streaming... requirements; an ID of one part
    after the prefix is its own family (``ZS-GRAD`` -> ``grad``).
    """
    parts = [p for p in requirement_id.split("-") if p]
    if len(parts) > 1 and parts[0].upper() == "ZS":
        parts = parts[1:]
    family = re.sub(r"\W", "_", parts[0].lower()) if parts else "unknown"
    return f"{PACKAGE}.{family}"


def _number(value: Any) -> str:
    """A value or limit of the JSON report (a float, or ``"inf"`` spelled as a string)."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def _measured(m: Mapping[str, Any]) -> str:
    """``error 0.324 > limit 1e-10: <the measurement's message>``, or the message alone for
    a measurement without numbers (an exception, a crash: value inf against limit 0)."""
    message = str(m.get("message") or "")
    try:
        value, limit = float(m["value"]), float(m["limit"])
    except (KeyError, TypeError, ValueError):
        return message or str(m.get("quantity", "?"))
    if value == float("inf") and limit == 0.0 and message:
        return message
    relation = ">" if value > limit else "vs"
    head = f"{m.get('quantity', '?')} {_number(value)} {relation} limit {_number(limit)}"
    return f"{head}: {message}" if message else head


def _bad(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The measurement a failure shows: the worst where it failed, else the first failure."""
    worst = entry.get("worst")
    if worst and not worst.get("passed", True):
        return worst
    return entry.get("failure") or None


def _case(m: Mapping[str, Any] | None) -> str:
    """The case's inputs as JSON, one key a line."""
    if not m or not isinstance(m.get("case"), Mapping) or not m["case"]:
        return ""
    lines = [f"  {json.dumps(str(k))}: {json.dumps(v, default=str)}" for k, v in m["case"].items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def _details(entry: Mapping[str, Any], m: Mapping[str, Any] | None, *, heading: str) -> str:
    """The text under a failure, error or skip: what happened, the requirement's message and
    the case's inputs (seed, shapes, dtype, options) as JSON."""
    lines = [f"{entry['id']} {entry.get('status', '?')}: {entry.get('title', '')}"]
    if entry.get("expected_failure"):
        lines.append(f"listed as an expected failure: {entry['expected_failure']}")
    message = str(entry.get("message") or "")
    if message:
        lines.append(message)
    if m is not None and not (m.get("message") and message.endswith(str(m["message"]))):
        lines.append(_measured(m))
    measured = entry.get("measured") or []
    past = sum(not x.get("passed", True) for x in measured)
    if past > 1:
        lines.append(f"{past} of {len(measured)} measurements past their limit")
    case = _case(m)
    if case:
        lines += [f"{heading}:", case]
    return "\n".join(lines)


def _summary(entry: Mapping[str, Any], m: Mapping[str, Any] | None) -> str:
    """The one-line ``message`` attribute: the measurement, else the requirement's message."""
    if m is not None:
        return _measured(m)
    return str(entry.get("message") or entry.get("status", "?"))


def _raised(entry: Mapping[str, Any], m: Mapping[str, Any] | None) -> tuple[str, str]:
    """(type, message) of an error: the exception where one was raised."""
    text = str((m or {}).get("message") or entry.get("message") or "error")
    found = _RAISED.search(text)
    if found and (m is None or m.get("quantity") == "exception"):
        kind = found.group(1)
        return kind, f"{kind}: {found.group(2)}" if found.group(2) else kind
    return str((m or {}).get("quantity") or "error"), text


def _result(entry: Mapping[str, Any], strict_xfails: bool) -> tuple[str, dict[str, str], str]:
    """(tag, attributes, text) of a requirement's result element; tag "" when it passed."""
    status, m = entry.get("status"), _bad(entry)
    level = entry.get("level", "MUST")
    if status in NOT_CONFORMING and level != "MUST":
        return "skipped", {"message": f"{level} not met: {_summary(entry, m)}"}, _details(
            entry, m, heading="case")
    if status in (FAILED, BLOCKED):
        return "failure", {"message": _summary(entry, m), "type": str(status)}, _details(
            entry, m, heading="case")
    if status == ERROR:
        kind, message = _raised(entry, m)
        return "error", {"message": message, "type": kind}, _details(
            entry, m, heading="last call")
    if status in (NOT_CLAIMED, NOT_APPLICABLE):
        why = f"{status}: {entry['message']}" if entry.get("message") else str(status)
        return "skipped", {"message": why}, ""
    if status == XFAIL:
        reason = entry.get("expected_failure") or "listed in --xfails"
        return "skipped", {"message": f"expected failure: {reason}"}, _details(
            entry, m, heading="case")
    if status == XPASS and strict_xfails:
        message = (f"xpass: listed as an expected failure ({entry.get('expected_failure')}) "
                   "but passed, and the run uses strict xfails")
        return "failure", {"message": message, "type": XPASS}, ""
    if status in (PASSED, XPASS):
        return "", {}, ""
    return "error", {"message": f"unknown status {status!r}", "type": "status"}, ""


def _system_out(entry: Mapping[str, Any]) -> str:
    lines = [f"{entry['id']}: {entry.get('title', '')}",
             f"level {entry.get('level', '?')}, feature {entry.get('feature', '?')}, "
             f"status {entry.get('status', '?')}"]
    if entry.get("expected_failure"):
        lines.append(f"expected failure: {entry['expected_failure']}")
    worst = entry.get("worst")
    if worst:
        lines.append(f"worst: {_measured(worst)}")
    return "\n".join(lines)


def _testcase(entry: Mapping[str, Any], strict_xfails: bool) -> tuple[ET.Element, str]:
    case = ET.Element("testcase", {"classname": classname(str(entry["id"])),
                                   "name": _text(entry["id"]),
                                   "time": _seconds(entry.get("seconds", 0))})
    tag, attributes, text = _result(entry, strict_xfails)
    if tag:
        result = ET.SubElement(case, tag, {k: _text(v) for k, v in attributes.items()})
        if text:
            result.text = _text(text)
    ET.SubElement(case, "system-out").text = _text(_system_out(entry))
    return case, tag


def _properties(report: Mapping[str, Any]) -> dict[str, str]:
    backend = report.get("backend") or {}
    found = {
        "suite_version": report.get("suite_version"),
        "spec_version": report.get("spec_version"),
        "reference_version": report.get("reference_version"),
        "backend": backend.get("name"),
        "backend_target": backend.get("target"),
        "device": backend.get("device"),
        "dtypes": ",".join(backend.get("dtypes") or ()),
        "features": ",".join(backend.get("features") or ()),
        "seed": report.get("seed"),
        "profile": report.get("profile"),
        "strict_xfails": report.get("strict_xfails"),
        "exit_code": report.get("exit_code"),
        "machine": report.get("machine"),
    }
    return {name: _text(value) for name, value in found.items() if value not in (None, "")}


def to_junit(report: Mapping[str, Any]) -> str:
    """JUnit XML text of a run's JSON report (the dict of `report.to_json`).

    One ``<testsuites>`` holds one ``<testsuite name="zeros-conformance[BACKEND]">`` with the
    run's versions, backend, dtypes, seed and profile as ``<properties>``, and one
    ``<testcase classname="zeros_conformance.FAMILY" name="ID">`` per requirement in the
    report's order (`classname`). A MUST requirement that is failed or blocked is a
    ``<failure>``, one in error an ``<error>``; a SHOULD requirement that is not met does not
    fail the run and is ``<skipped message="SHOULD not met: ...">`` with its measurement; not
    claimed, not applicable and xfail are ``<skipped>``; an xpass passes, or is a
    ``<failure>`` when the report has ``strict_xfails``. The failures and errors so counted
    are non-zero exactly when the run's exit code is 1.

    Parameters
    ----------
    report : the JSON report of a run.

    Returns
    -------
    str
        The XML document, with its declaration, UTF-8.
    """
    strict = bool(report.get("strict_xfails"))
    entries = list(report.get("requirements") or ())
    running = report.get("running")
    if not report.get("complete", True) and running:
        entries.append({"id": running, "status": ERROR, "level": "MUST", "feature": "?",
                        "title": "", "message": "the run stopped while this requirement "
                                                "was running (the process died or was killed)"})
    name = (report.get("backend") or {}).get("name", "?")
    suite = ET.Element("testsuite", {"name": _text(f"zeros-conformance[{name}]")})
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(report).items():
        ET.SubElement(properties, "property", {"name": name, "value": value})
    counts = {"failure": 0, "error": 0, "skipped": 0, "": 0}
    for entry in entries:
        case, tag = _testcase(entry, strict)
        counts[tag] += 1
        suite.append(case)
    totals = {"tests": str(len(entries)), "failures": str(counts["failure"]),
              "errors": str(counts["error"]), "skipped": str(counts["skipped"]),
              "time": _seconds(report.get("seconds", 0))}
    suite.attrib.update(totals)
    root = ET.Element("testsuites", {"name": "zeros-conformance", **totals})
    root.append(suite)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def write(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write `to_junit` of `report` to `path` (UTF-8) and return the path.

    Parameters
    ----------
    report : the JSON report of a run (`report.to_json`).
    path : the file to write; its folder must exist.

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    path.write_text(to_junit(report), encoding="utf-8")
    return path
