"""A checker for the constraints of the Jenkins xunit plugin's JUnit schema (junit-10.xsd).

Written here from reading that schema (jenkinsci/xunit-plugin,
src/main/resources/org/jenkinsci/plugins/xunit/types/model/xsd/junit-10.xsd); the schema file
itself is not part of this project.  What it enforces:

* which elements exist and which children each may hold (``CHILDREN``);
* which attributes each element may carry and which are required (``ATTRS``);
* the ``time`` of <testsuite> and <testsuites> is a surefire time: digits (optionally grouped
  by commas in threes) and an optional fraction, never an exponent (``SUREFIRE_TIME``);
* elements declared as plain strings (system-out, system-err, stackTrace) hold no child
  elements, and elements without mixed content hold no text.

:func:`check_report` adds what this project promises beyond the schema: every time is a plain
decimal, the counts on <testsuite>/<testsuites> are non-negative integers that match their
cases, and every failure, error and skipped carries a message.

Usage: ``python tests/junit_schema.py FILE...`` prints every violation and exits 1 if any.
"""

from __future__ import annotations

import re
import sys
from xml.etree import ElementTree as ET

# digits, or groups of up to three digits separated by commas ending in a group of three,
# repeated; then an optional '.' and digits (the schema's SUREFIRE_TIME restriction)
SUREFIRE_TIME = re.compile(r"(?:(?:[0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(?:\.[0-9]*)?")
PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")

_RESULT = {"type": False, "message": False}
_RERUN = {"type": True, "message": False}

# element -> {attribute: required}
ATTRS: dict[str, dict[str, bool]] = {
    "testsuites": {"name": False, "time": False, "tests": False, "failures": False, "errors": False},
    "testsuite": {"name": True, "tests": True, "failures": True, "errors": True, "group": False, "time": False,
                  "skipped": False, "timestamp": False, "hostname": False, "id": False, "package": False,
                  "file": False, "log": False, "url": False},
    "properties": {},
    "property": {"name": True, "value": True},
    "testcase": {"name": True, "time": False, "classname": False, "group": False},
    "failure": _RESULT, "error": _RESULT, "skipped": _RESULT,
    "rerunFailure": _RERUN, "rerunError": _RERUN, "flakyFailure": _RERUN, "flakyError": _RERUN,
    "system-out": {}, "system-err": {}, "stackTrace": {},
}

_RERUN_KIDS = ("stackTrace", "system-out", "system-err")
# element -> the child elements it may hold (in any order and number, except the rerun types)
CHILDREN: dict[str, tuple[str, ...]] = {
    "testsuites": ("testsuite",),
    "testsuite": ("testsuite", "properties", "testcase", "system-out", "system-err"),
    "properties": ("property",),
    "property": (),
    "testcase": ("skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure", "flakyError",
                 "system-out", "system-err"),
    "failure": (), "error": (), "skipped": (),
    "rerunFailure": _RERUN_KIDS, "rerunError": _RERUN_KIDS, "flakyFailure": _RERUN_KIDS, "flakyError": _RERUN_KIDS,
    "system-out": (), "system-err": (), "stackTrace": (),
}

# elements whose content may include text (mixed content or plain strings)
TEXT = {"failure", "error", "skipped", "rerunFailure", "rerunError", "flakyFailure", "flakyError",
        "system-out", "system-err", "stackTrace"}

# a document may start with any element the schema declares globally
ROOTS = set(ATTRS) - {"stackTrace"}


def _where(path: list[str]) -> str:
    return "/".join(path)


def check_schema(root: ET.Element) -> list[str]:
    """Every violation of junit-10.xsd's rules in the tree under ``root``."""
    problems: list[str] = []
    if root.tag not in ROOTS:
        return [f"{root.tag}: not an element the schema declares"]

    def visit(e: ET.Element, path: list[str]) -> None:
        here = _where(path)
        allowed = ATTRS[e.tag]
        for a in e.attrib:
            if a not in allowed:
                problems.append(f"{here}: attribute {a!r} not allowed on <{e.tag}>")
        for a, required in allowed.items():
            if required and a not in e.attrib:
                problems.append(f"{here}: required attribute {a!r} missing on <{e.tag}>")
        if e.tag in ("testsuite", "testsuites") and "time" in e.attrib \
                and not SUREFIRE_TIME.fullmatch(e.attrib["time"]):
            problems.append(f"{here}: time {e.attrib['time']!r} is not a surefire time (digits and a fraction)")
        if e.tag not in TEXT:
            texts = [e.text] + [c.tail for c in e]
            if any(t and t.strip() for t in texts):
                problems.append(f"{here}: <{e.tag}> holds text, which the schema does not allow")
        kids = [c.tag for c in e]
        for k in kids:
            if k not in CHILDREN[e.tag]:
                problems.append(f"{here}: <{k}> not allowed inside <{e.tag}>")
        if e.tag in ("rerunFailure", "rerunError", "flakyFailure", "flakyError"):
            order = [_RERUN_KIDS.index(k) for k in kids if k in _RERUN_KIDS]
            if order != sorted(set(order)) or len(order) != len(set(order)):
                problems.append(f"{here}: <{e.tag}> children out of order or repeated")
        for i, c in enumerate(e):
            if c.tag in ATTRS:
                visit(c, [*path, f"{c.tag}[{i}]"])

    visit(root, [root.tag])
    return problems


def _int(e: ET.Element, name: str, here: str, problems: list[str]) -> int | None:
    v = e.get(name)
    if v is None:
        return None
    if not v.isdigit():
        problems.append(f"{here}: {name}={v!r} is not a non-negative integer")
        return None
    return int(v)


def check_report(root: ET.Element) -> list[str]:
    """The schema's rules plus this project's: plain decimal times, counts that add up,
    a message on every failure, error and skipped."""
    problems = check_schema(root)
    grand = {"tests": 0, "failures": 0, "errors": 0}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for si, s in enumerate(suites):
        here = f"testsuite[{si}] {s.get('name')!r}"
        cases = s.findall("testcase")
        got = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
        for ci, c in enumerate(cases):
            t = c.get("time")
            if t is None or not PLAIN_DECIMAL.fullmatch(t):
                problems.append(f"{here} testcase[{ci}]: time {t!r} is not a plain decimal")
            for kind, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                for x in c.findall(kind):
                    got[key] += 1
                    if not x.get("message"):
                        problems.append(f"{here} testcase[{ci}] {c.get('name')!r}: <{kind}> without a message")
        t = s.get("time")
        if t is None or not PLAIN_DECIMAL.fullmatch(t):
            problems.append(f"{here}: time {t!r} is not a plain decimal")
        for key, n in got.items():
            v = _int(s, key, here, problems)
            if v is not None and v != n:
                problems.append(f"{here}: {key}={v} but its cases count {n}")
        for key in grand:
            grand[key] += got[key]
    if root.tag == "testsuites":
        for key, n in grand.items():
            v = _int(root, key, "testsuites", problems)
            if v is not None and v != n:
                problems.append(f"testsuites: {key}={v} but its suites count {n}")
    return problems


def check_file(path: str) -> list[str]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return [f"{path}: {e}"]
    return check_report(root)


def main(argv: list[str]) -> int:
    bad = 0
    for path in argv:
        problems = check_file(path)
        for p in problems:
            print(f"{path}: {p}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
