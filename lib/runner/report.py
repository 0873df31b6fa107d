"""Reports in the formats kernel CI reads: kselftest TAP (live), JUnit XML, summary.json.

TAP follows tools/testing/selftests/kselftest.h: ``TAP version 13``, the plan ``1..N`` first,
``ok N name``, ``not ok N name``, ``ok N name # SKIP reason``, ``ok N name # XFAIL reason``,
``ok N name # XPASS reason`` (an xpass fails the run, as ksft_finished() makes it),
``# `` diagnostics and a final ``# Totals: pass:P fail:F xfail:X xpass:Y skip:S error:E``.
Each case is announced with ``# [RUN] name`` (cow.c's log_test_start), so a console watcher
can name the case that was running when a kernel died.  A timed-out case is
``not ok N name # TIMEOUT reason``; it counts as a failure.

JUnit is built with xml.etree within the Jenkins xunit plugin's junit-10.xsd: a first suite
``kmm.run`` holding the run's facts once, then one testsuite per area, classname = area, name =
the TAP name, elapsed time always set, failure and skip messages always set, diagnostics as
body; XFAIL is ``skipped`` of type ``xfail``, a planned case an interrupted run never reached
is ``skipped`` of type ``notrun``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from lib.runner.verdict import BAD, REPORTED, Verdict

VERDICTS = REPORTED  # the order of the totals


@dataclass
class CaseResult:
    area: str
    name: str
    verdict: Verdict  # one of REPORTED (a string naming one is taken as that Verdict)
    message: str = ""
    details: str = ""
    duration: float = 0.0
    nodeid: str = ""
    timeout: bool = False
    kmsg: str = ""
    repeats: list[str] = field(default_factory=list)
    traceback: str = ""  # full Python traceback: JUnit body and summary.json only, never TAP
    started: str = ""  # UTC start (iso()), '' where unknown

    def __post_init__(self) -> None:
        v = Verdict(self.verdict)
        self.timeout = self.timeout or v is Verdict.TIMEOUT
        self.verdict = v.reported

    @property
    def failed(self) -> bool:
        return Verdict(self.verdict).failed


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tap_name(name: str) -> str:
    """A name safe for a TAP line: no '#' (it would start a directive), no newlines."""
    return one_line(name.replace("#", "no."), 500)


def tap_result_line(number: int, r: CaseResult) -> str:
    name = tap_name(r.name)
    msg = one_line(r.message)
    if r.verdict == Verdict.PASS:
        return f"ok {number} {name}"
    if r.verdict == Verdict.SKIP:
        return f"ok {number} {name} # SKIP {msg}"
    if r.verdict == Verdict.XFAIL:
        return f"ok {number} {name} # XFAIL {msg}"
    if r.verdict == Verdict.XPASS:
        return f"ok {number} {name} # XPASS {msg}"
    if r.verdict == Verdict.ERROR:
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
        self[Verdict(r.verdict).reported] += 1

    def line(self) -> str:
        return (
            f"# Totals: pass:{self['pass']} fail:{self['fail']} xfail:{self['xfail']} "
            f"xpass:{self['xpass']} skip:{self['skip']} error:{self['error']}"
        )

    @property
    def failed(self) -> bool:
        return any(self[v] for v in BAD)

    @property
    def ran(self) -> int:
        return sum(self.values())


class TapWriter:
    """Writes TAP to several streams at once, flushing every line (docs/ARCHITECTURE.md rule 7).

    A stream that fails is dropped and the others go on: the live TAP on stdout never depends
    on the results folder, and a closed stdout (``| head``) never stops the files.  The failure
    of a named stream (a file) is kept in ``errors`` for the runner to act on.
    """

    def __init__(self, streams: Iterable[IO[str]], names: Iterable[str] = ()) -> None:
        self.streams = list(streams)
        self.names = dict(zip(map(id, self.streams), names))
        self.errors: list[str] = []
        self.number = 0
        self.totals = Totals()
        self.plan = 0

    def _emit(self, line: str) -> None:
        for s in list(self.streams):
            try:
                s.write(line + "\n")
                s.flush()
            except (OSError, ValueError) as e:
                self.streams.remove(s)
                name = self.names.get(id(s))
                if name:
                    self.errors.append(f"{name}: {getattr(e, 'strerror', None) or e}")
                try:
                    s.close()
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        for s in self.streams:
            try:
                s.close()
            except (OSError, ValueError) as e:
                name = self.names.get(id(s))
                if name:
                    self.errors.append(f"{name}: {getattr(e, 'strerror', None) or e}")
        self.streams = []

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
        if r.failed:
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

# The Jenkins xunit plugin's junit-10.xsd is the strictest schema dashboards apply; what it
# allows decides the layout (tests/junit_schema.py checks every file against its rules):
# <testsuites> carries only name/tests/failures/errors/time, so the run's facts go once into
# the properties of a first suite, ``kmm.run``; <testcase> has no timestamp, so a case's start
# is a line of its system-out; times are plain decimals (no exponent).

RUN_SUITE = "run"  # the area name of the suite holding the run's facts
NOT_RUN = "notrun"


def iso(t: float) -> str:
    """UTC time with milliseconds, as summary.json writes every time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _stamp(iso_time: str) -> str:
    """A JUnit timestamp (seconds, no zone: the form Ant and surefire write) from :func:`iso`."""
    return iso_time[:19]


def seconds(value: float) -> str:
    """A time as junit-10.xsd's SUREFIRE_TIME accepts it: a plain decimal, never an exponent."""
    return f"{max(0.0, value):.3f}"


_XML_BAD = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry (kernel logs may hold control bytes): the rest becomes U+FFFD."""
    return _XML_BAD.sub("\ufffd", text)


def _kind(r: CaseResult) -> tuple[str, str, str] | None:
    """(element, type, message) of a result's JUnit child, None for a pass."""
    msg = one_line(r.message) or r.verdict
    if r.verdict == Verdict.FAIL:
        return ("failure", "timeout" if r.timeout else "failure", msg)
    if r.verdict == Verdict.ERROR:
        return ("error", "cannot-test" if r.message.startswith("cannot test") else "error", msg)
    if r.verdict == Verdict.XPASS:
        return ("failure", "xpass", "XPASS: " + msg)
    if r.verdict == Verdict.SKIP:
        return ("skipped", "skip", msg)
    if r.verdict == Verdict.XFAIL:
        return ("skipped", "xfail", "XFAIL: " + msg)
    return None


def _sub(parent, tag: str, attrs: dict[str, str] | None = None, text: str | None = None):
    from xml.etree import ElementTree as ET

    e = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in (attrs or {}).items()})
    if text:
        e.text = xml_text(text)
    return e


def _testcase(parent, r: CaseResult) -> dict[str, int]:
    tc = _sub(parent, "testcase", {"classname": r.area, "name": r.name, "time": seconds(r.duration)})
    kind = _kind(r)
    body = "\n".join(x for x in (r.details, r.traceback, r.kmsg and "kernel log:\n" + r.kmsg) if x)
    if kind:
        el, typ, msg = kind
        _sub(tc, el, {"type": typ, "message": msg}, body or None)
    out = [f"verdict: {r.verdict}"]
    if r.started:
        out.append(f"started: {r.started}")
    if r.repeats:
        out.append("verdicts of the repeats: " + ", ".join(r.repeats))
    if r.nodeid:
        out.append(f"nodeid: {r.nodeid}")
    _sub(tc, "system-out", text="\n".join(out))
    return {"tests": 1, "failures": int(el == "failure") if kind else 0,
            "errors": int(el == "error") if kind else 0, "skipped": int(el == "skipped") if kind else 0}


def _not_run(parent, area: str, name: str, reason: str) -> dict[str, int]:
    tc = _sub(parent, "testcase", {"classname": area, "name": name, "time": seconds(0)})
    _sub(tc, "skipped", {"type": NOT_RUN, "message": f"not run: {reason}"})
    _sub(tc, "system-out", text=f"verdict: {NOT_RUN}")
    return {"tests": 1, "failures": 0, "errors": 0, "skipped": 1}


@dataclass
class Planned:
    area: str
    name: str
    nodeid: str = ""


def junit_xml(results: list[CaseResult], properties: dict[str, str], *, planned: list[Planned] | None = None,
              partial: str = "", run: dict | None = None, started: float | None = None,
              suite_prefix: str = "kmm") -> str:
    """The run as JUnit XML within junit-10.xsd.

    ``properties`` (kernel facts) and ``run`` (the suite's own facts: command, options,
    version) are written once, in the first suite ``kmm.run``.  A ``partial`` run adds an
    ``error`` case there naming why it stopped, and every ``planned`` case without a result
    appears as skipped with type ``notrun``, so the file never reads as a complete green run.
    """
    from xml.etree import ElementTree as ET

    host = os.uname().nodename
    run = dict(run or {})
    t0 = started if started is not None else time.time()
    root = ET.Element("testsuites", {"name": f"{suite_prefix}-conformance"})
    grand = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0

    def suite(area: str, stamp: str) -> ET.Element:
        return _sub(root, "testsuite", {"name": f"{suite_prefix}.{area}", "timestamp": stamp, "hostname": host})

    def close(s: ET.Element, counts: dict[str, int], secs: float) -> None:
        s.set("tests", str(counts["tests"]))
        s.set("failures", str(counts["failures"]))
        s.set("errors", str(counts["errors"]))
        s.set("skipped", str(counts["skipped"]))
        s.set("time", seconds(secs))
        for k in grand:
            grand[k] += counts[k]

    # the run's facts, once
    head = suite(RUN_SUITE, _stamp(iso(t0)))
    props = _sub(head, "properties")
    for k, v in {**properties, **{f"suite.{k}": str(v) for k, v in run.items()}}.items():
        _sub(props, "property", {"name": k, "value": str(v)})
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    done = {r.name for r in results}
    missing = [p for p in (planned or []) if p.name not in done]
    if partial:
        msg = f"run {partial}: {len(missing)} of {len(planned or results)} planned cases not run"
        tc = _sub(head, "testcase", {"classname": RUN_SUITE, "name": "run completed", "time": seconds(0)})
        _sub(tc, "error", {"type": "interrupted", "message": msg})
        counts["tests"] += 1
        counts["errors"] += 1
    close(head, counts, 0.0)

    areas: dict[str, list] = {}
    for r in results:
        areas.setdefault(r.area, []).append(r)
    for p in missing:
        areas.setdefault(p.area, []).append(p)
    for area, items in areas.items():
        starts = [r.started for r in items if isinstance(r, CaseResult) and r.started]
        s = suite(area, _stamp(min(starts)) if starts else _stamp(iso(t0)))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        secs = 0.0
        for r in items:
            if isinstance(r, CaseResult):
                c = _testcase(s, r)
                secs += r.duration
            else:
                c = _not_run(s, area, r.name, partial or "the run ended early")
            for k in counts:
                counts[k] += c[k]
        close(s, counts, secs)
        total_time += secs
    for k, v in grand.items():
        root.set(k, str(v))
    root.set("time", seconds(total_time))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_from_summary(data: dict) -> str:
    """JUnit rebuilt from a summary.json (the VM runner merges the guest's report with its own)."""
    cases = [CaseResult(**c) for c in data.get("cases", [])]
    planned = [Planned(**p) for p in data.get("planned", [])]
    started = data.get("started_epoch")
    return junit_xml(cases, data.get("kernel", {}), planned=planned,
                     partial=data.get("partial_reason", "") if data.get("partial") else "",
                     run=data.get("run", {}), started=started)


def summary(results: list[CaseResult], properties: dict[str, str], *, partial: str, started: float,
            exit_code: int | None, planned: list[Planned] | None = None, run: dict | None = None) -> dict:
    """summary.json.  ``exit_code`` is None (null) while the run is going on: a report left
    by a killed run never claims a result it did not reach."""
    totals = Totals()
    for r in results:
        totals.add(r)
    done = {r.name for r in results}
    plan = list(planned) if planned is not None else [Planned(r.area, r.name, r.nodeid) for r in results]
    return {
        "format": "kmm-conformance-summary/2",
        "kernel": properties,
        "run": dict(run or {}),
        "partial": bool(partial),
        "partial_reason": partial,
        "started": iso(started),
        "started_epoch": started,
        "duration": round(time.time() - started, 3),
        "totals": dict(totals),
        "exit_code": exit_code,
        "planned": [dict(vars(p)) for p in plan],
        "not_run": [p.name for p in plan if p.name not in done],
        "cases": [{**vars(r), "repeats": list(r.repeats)} for r in results],  # asdict() is 10x slower
    }


def suite_version(root: str) -> dict[str, str]:
    """The suite's own version: pyproject's version, the git commit and ``git describe
    --always --dirty`` when ``root`` is a git work tree, else "unknown"."""
    version = "unknown"
    try:
        with open(os.path.join(root, "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        version = m.group(1) if m else version
    except OSError:
        pass

    def git(*args: str) -> str:
        from lib.kernel.system import git_output

        return git_output(root, *args, timeout=10) or "unknown"

    return {"version": version, "commit": git("rev-parse", "HEAD"), "describe": git("describe", "--always", "--dirty")}


def write_atomic(path: str, text: str) -> None:
    """Write ``path`` through a temporary file and rename, so a reader sees the old or the new
    file, never half of one.  On failure (a full disk) the temporary file is removed and the
    OSError raised."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_reports(folder: str, data: dict, sync: bool = True) -> None:
    """junit.xml and summary.json of ``data`` (a :func:`summary`): both temporary files are
    written first and only then renamed, so a folder that fills up keeps the previous pair.
    ``sync`` (the final reports) also makes them durable before the rename."""
    texts = {"junit.xml": junit_from_summary(data), "summary.json": json.dumps(data, indent=1) + "\n"}
    tmps: list[str] = []
    try:
        for name, text in texts.items():
            tmp = os.path.join(folder, f"{name}.tmp{os.getpid()}")
            tmps.append(tmp)
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
        for name, tmp in zip(texts, tmps):
            os.replace(tmp, os.path.join(folder, name))
    except OSError as e:
        for tmp in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise OSError(e.errno, e.strerror, e.filename or (tmps[-1] if tmps else folder)) from None


def mark_interrupted(folder: str, reason: str, properties: dict[str, str] | None = None) -> dict:
    """Rewrite a folder's reports for a run stopped from outside its runner (a ``--kernel``
    run's SIGINT kills the guest mid-run): its last summary.json (or an empty one) marked
    partial with ``reason``, every planned case it has no result for listed as not run, and a
    junit.xml to match."""
    from lib.runner import exitcodes

    path = os.path.join(folder, "summary.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = summary([], {}, partial=reason, started=time.time(), exit_code=None)
    data["partial"] = True
    data["partial_reason"] = reason
    data.setdefault("kernel", {}).update(properties or {})
    data["kernel"]["run.partial"] = reason
    done = {c["name"] for c in data.get("cases", [])}
    data["not_run"] = [p["name"] for p in data.get("planned", []) if p["name"] not in done]
    data["exit_code"] = exitcodes.kselftest_code(data.get("totals", {}), True)
    write_reports(folder, data)
    return data


def write_summary(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# parsing our own TAP back (tests, --compare, the VM runner)

_RESULT = re.compile(r"^(ok|not ok) (\d+) (.*?)(?: # (SKIP|XFAIL|XPASS|TIMEOUT|error)(?: (.*))?)?$")


_DIRECTIVE = {"SKIP": Verdict.SKIP, "XFAIL": Verdict.XFAIL, "XPASS": Verdict.XPASS, "error": Verdict.ERROR}


def parse_tap(text: str) -> list[tuple[str, Verdict, str]]:
    """(name, verdict, message) for every result line of kselftest-style TAP."""
    out = []
    for line in text.splitlines():
        m = _RESULT.match(line.rstrip("\r"))
        if not m:
            continue
        ok, _num, name, directive, msg = m.groups()
        verdict = _DIRECTIVE.get(directive) or (Verdict.PASS if ok == "ok" else Verdict.FAIL)
        out.append((name, verdict, msg or ""))
    return out
