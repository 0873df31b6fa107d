"""Reports in the formats kernel CI reads: kselftest TAP (live), JUnit XML, summary.json.

TAP follows tools/testing/selftests/kselftest.h: ``TAP version 13``, the plan ``1..N`` first,
``ok N name``, ``not ok N name``, ``ok N name # SKIP reason``, ``ok N name # XFAIL reason``,
``ok N name # XPASS reason`` (an xpass fails the run, as ksft_finished() makes it),
``# `` diagnostics and a final ``# Totals: pass:P fail:F xfail:X xpass:Y skip:S error:E``.
Each case is announced with ``# [RUN] name`` (cow.c's log_test_start), so a console watcher
can name the case that was running when a kernel died.  A timed-out case is
``not ok N name # TIMEOUT reason``; it counts as a failure.

JUnit is written with junit-xml: one testsuite per area, classname = area, name = the TAP
name, elapsed time always set, failure and skip messages always set, diagnostics as body.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import IO

VERDICTS = ("pass", "fail", "xfail", "xpass", "skip", "error")


@dataclass
class CaseResult:
    area: str
    name: str
    verdict: str  # one of VERDICTS
    message: str = ""
    details: str = ""
    duration: float = 0.0
    nodeid: str = ""
    timeout: bool = False
    kmsg: str = ""
    repeats: list[str] = field(default_factory=list)
    traceback: str = ""  # full Python traceback: JUnit body and summary.json only, never TAP

    @property
    def failed(self) -> bool:
        return self.verdict in ("fail", "error", "xpass")


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tap_name(name: str) -> str:
    """A name safe for a TAP line: no '#' (it would start a directive), no newlines."""
    return one_line(name.replace("#", "no."), 500)


def tap_result_line(number: int, r: CaseResult) -> str:
    name = tap_name(r.name)
    msg = one_line(r.message)
    if r.verdict == "pass":
        return f"ok {number} {name}"
    if r.verdict == "skip":
        return f"ok {number} {name} # SKIP {msg}"
    if r.verdict == "xfail":
        return f"ok {number} {name} # XFAIL {msg}"
    if r.verdict == "xpass":
        return f"ok {number} {name} # XPASS {msg}"
    if r.verdict == "error":
        return f"not ok {number} {name} # error {msg}"
    if r.timeout:
        return f"not ok {number} {name} # TIMEOUT {msg}"
    return f"not ok {number} {name}"


def diagnostics(text: str) -> list[str]:
    return [("# " + line).rstrip() for line in text.splitlines()]


class Totals(dict):
    def __init__(self) -> None:
        super().__init__({v: 0 for v in VERDICTS})

    def add(self, r: CaseResult) -> None:
        self[r.verdict] += 1

    def line(self) -> str:
        return (
            f"# Totals: pass:{self['pass']} fail:{self['fail']} xfail:{self['xfail']} "
            f"xpass:{self['xpass']} skip:{self['skip']} error:{self['error']}"
        )

    @property
    def failed(self) -> bool:
        return bool(self["fail"] or self["error"] or self["xpass"])

    @property
    def ran(self) -> int:
        return sum(self.values())


class TapWriter:
    """Writes TAP to several streams at once, flushing every line (DESIGN rule 7)."""

    def __init__(self, streams: Iterable[IO[str]]) -> None:
        self.streams = list(streams)
        self.number = 0
        self.totals = Totals()
        self.plan = 0

    def _emit(self, line: str) -> None:
        for s in self.streams:
            s.write(line + "\n")
            s.flush()

    def header(self, plan: int) -> None:
        self.plan = plan
        self._emit("TAP version 13")
        self._emit(f"1..{plan}")

    def diag(self, text: str) -> None:
        for line in diagnostics(text):
            self._emit(line)

    def start(self, name: str) -> None:
        self._emit(f"# [RUN] {tap_name(name)}")

    def result(self, r: CaseResult) -> None:
        self.number += 1
        self.totals.add(r)
        if r.verdict in ("fail", "error", "xpass"):
            self.diag(r.message)
            if r.details:
                self.diag(r.details)
        if r.kmsg:
            self.diag("kernel log during the case:\n" + r.kmsg)
        if r.repeats:
            self.diag("verdicts of the repeats: " + ", ".join(r.repeats))
        self._emit(tap_result_line(self.number, r))

    def finish(self, partial_reason: str = "") -> None:
        if partial_reason:
            self._emit(f"# PARTIAL RUN: {partial_reason}")
        if self.number != self.plan:
            self._emit(f"# Planned tests != run tests ({self.plan} != {self.number})")
        self._emit(self.totals.line())


# ---------------------------------------------------------------------------------------
# JUnit


def junit_xml(results: list[CaseResult], properties: dict[str, str], suite_prefix: str = "kmm") -> str:
    from junit_xml import TestCase, TestSuite, to_xml_report_string

    areas: dict[str, list[CaseResult]] = {}
    for r in results:
        areas.setdefault(r.area, []).append(r)
    suites = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    for area, rs in areas.items():
        cases = []
        for r in rs:
            body = "\n".join(x for x in (r.details, r.traceback, r.kmsg and "kernel log:\n" + r.kmsg) if x)
            tc = TestCase(
                r.name,
                classname=area,
                elapsed_sec=max(r.duration, 1e-6),
                stdout=body or None,
                file=r.nodeid.split("::")[0] or None,
            )
            msg = one_line(r.message) or r.verdict
            if r.verdict == "fail":
                kind = "timeout" if r.timeout else "failure"
                tc.add_failure_info(message=msg, output=body or msg, failure_type=kind)
            elif r.verdict == "error":
                tc.add_error_info(message=msg, output=body or msg, error_type="error")
            elif r.verdict == "xpass":
                tc.add_failure_info(message="XPASS: " + msg, output=body or msg, failure_type="xpass")
            elif r.verdict == "skip":
                tc.add_skipped_info(message=msg)
            elif r.verdict == "xfail":
                tc.add_skipped_info(message="XFAIL: " + msg)
            cases.append(tc)
        suites.append(TestSuite(f"{suite_prefix}.{area}", cases, properties=dict(properties), timestamp=stamp,
                                hostname=os.uname().nodename))
    return to_xml_report_string(suites, prettyprint=True, encoding="utf-8")


def summary(results: list[CaseResult], properties: dict[str, str], *, partial: str, started: float,
            exit_code: int) -> dict:
    totals = Totals()
    for r in results:
        totals.add(r)
    return {
        "format": "kmm-conformance-summary/1",
        "kernel": properties,
        "partial": bool(partial),
        "partial_reason": partial,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration": round(time.time() - started, 3),
        "totals": dict(totals),
        "exit_code": exit_code,
        "cases": [asdict(r) for r in results],
    }


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_summary(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def results_dir_name(release: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9._+-]', '_', release)}"


# ---------------------------------------------------------------------------------------
# parsing our own TAP back (tests, --compare, the VM runner)

_RESULT = re.compile(r"^(ok|not ok) (\d+) (.*?)(?: # (SKIP|XFAIL|XPASS|TIMEOUT|error)(?: (.*))?)?$")


def parse_tap(text: str) -> list[tuple[str, str, str]]:
    """(name, verdict, message) for every result line of kselftest-style TAP."""
    out = []
    for line in text.splitlines():
        m = _RESULT.match(line.rstrip("\r"))
        if not m:
            continue
        ok, _num, name, directive, msg = m.groups()
        if directive == "SKIP":
            verdict = "skip"
        elif directive == "XFAIL":
            verdict = "xfail"
        elif directive == "XPASS":
            verdict = "xpass"
        elif directive == "error":
            verdict = "error"
        else:
            verdict = "pass" if ok == "ok" else "fail"
        out.append((name, verdict, msg or ""))
    return out
