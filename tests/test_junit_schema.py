"""junit.xml within the Jenkins xunit plugin's junit-10.xsd (tests/junit_schema.py), and the
checker itself caught on every rule it claims (negative controls)."""

from __future__ import annotations

import copy
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from lib.runner import report
from tests import junit_schema

DATA = Path(__file__).resolve().parent / "data" / "junit"

RESULTS = [
    report.CaseResult("missing", "zeropage on anon", "pass", duration=0.01, started="2026-01-02T03:04:05.006Z"),
    report.CaseResult("missing", "zeropage on hugetlb", "skip", "not enough HugeTLB pages", duration=1e-9),
    report.CaseResult("cow", "vmsplice() + unmap in child with hugetlb (2048 kB)", "xfail", "upstream: hugetlb"),
    report.CaseResult("cow", "Basic COW after fork() with base page", "fail", "child saw the parent's write",
                      details="offset 0: 0xff != 0x01\x00\x1b[0m", duration=123456.123456789),
    report.CaseResult("remove", "stale-source race # on anon", "fail", "timeout after 5s: waiting", timeout=True),
    report.CaseResult("remove", "broken fixture", "error", "setup: boom"),
    report.CaseResult("remove", "khugepaged starved", "error", "cannot test: no progress"),
    report.CaseResult("remove", "lucky", "xpass", "expected to fail", repeats=["pass", "pass"]),
]
PLANNED = [report.Planned(r.area, r.name) for r in RESULTS] + [
    report.Planned("remove", "never reached"), report.Planned("thp_collapse", "never reached either")]


def ours(**kw) -> ET.Element:
    return ET.fromstring(report.junit_xml(RESULTS, {"kernel.release": "6.18-test"}, **kw))


def test_our_junit_is_within_the_schema():
    for kw in ({}, {"planned": PLANNED, "partial": "interrupted (SIGINT)", "run": {"commit": "abc"}}):
        assert junit_schema.check_report(ours(**kw)) == []


def test_the_old_junit_xml_output_fails_it():
    """What the suite wrote with junit-xml 1.9 (tests/data/junit/legacy-junit-xml.xml)."""
    problems = junit_schema.check_file(str(DATA / "legacy-junit-xml.xml"))
    text = "\n".join(problems)
    assert "attribute 'disabled' not allowed on <testsuite>" in text
    assert "attribute 'file' not allowed on <testcase>" in text
    assert "time '1e-06' is not a surefire time" in text


def _suite(root: ET.Element, name: str = "kmm.cow") -> ET.Element:
    return next(s for s in root.iter("testsuite") if s.get("name") == name)


def _case(root: ET.Element) -> ET.Element:
    return _suite(root).find("testcase")  # type: ignore[return-value]


MUTATIONS = {
    "testcase file attribute": (lambda r: _case(r).set("file", "x.py"), "attribute 'file' not allowed"),
    "testcase timestamp": (lambda r: _case(r).set("timestamp", "2026"), "attribute 'timestamp' not allowed"),
    "testsuite disabled": (lambda r: _suite(r).set("disabled", "0"), "attribute 'disabled' not allowed"),
    "testsuite without name": (lambda r: _suite(r).attrib.pop("name"), "required attribute 'name' missing"),
    "testsuite without errors": (lambda r: _suite(r).attrib.pop("errors"), "required attribute 'errors'"),
    "testcase without name": (lambda r: _case(r).attrib.pop("name"), "required attribute 'name' missing"),
    "exponent suite time": (lambda r: _suite(r).set("time", "1.5e-05"), "not a surefire time"),
    "exponent run time": (lambda r: r.set("time", "2E3"), "not a surefire time"),
    "exponent case time": (lambda r: _case(r).set("time", "1e-06"), "not a plain decimal"),
    "negative suite time": (lambda r: _suite(r).set("time", "-1.0"), "not a surefire time"),
    "properties on testsuites": (lambda r: r.insert(0, ET.Element("properties")), "<properties> not allowed"),
    "property without value": (lambda r: _suite(r, "kmm.run").find("properties/property").attrib.pop("value"),
                               "required attribute 'value' missing"),
    "skipped inside system-out": (lambda r: _case(r).find("system-out").append(ET.Element("skipped")),
                                  "<skipped> not allowed inside <system-out>"),
    "unknown element": (lambda r: _case(r).append(ET.Element("xfail")), "<xfail> not allowed inside <testcase>"),
    "text in a testsuite": (lambda r: setattr(_suite(r), "text", "stray"), "holds text"),
    "attribute on system-out": (lambda r: _case(r).find("system-out").set("name", "x"),
                                "attribute 'name' not allowed on <system-out>"),
    "counts that do not add up": (lambda r: _suite(r).set("failures", "0"), "failures=0 but its cases count 1"),
    "skipped without message": (lambda r: _suite(r).find("testcase/skipped").attrib.pop("message"),
                                "<skipped> without a message"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_checker_catches(mutation):
    root = ours()
    assert junit_schema.check_report(root) == []
    change, needle = MUTATIONS[mutation]
    bad = copy.deepcopy(root)
    change(bad)
    problems = junit_schema.check_report(bad)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("value,ok", [
    ("0", True), ("0.000", True), ("12.5", True), ("1,234.5", True), ("123456.123", True), (".5", True),
    ("1e-06", False), ("1.5E3", False), ("-1", False), ("1,2", False), ("1.2.3", False), ("inf", False),
])
def test_surefire_time(value, ok):
    assert bool(junit_schema.SUREFIRE_TIME.fullmatch(value)) is ok


def test_times_are_plain_decimals():
    for v in (0.0, 1e-9, 1e-7, 123456.123456789, 1e20):
        assert junit_schema.PLAIN_DECIMAL.fullmatch(report.seconds(v)), report.seconds(v)
        assert junit_schema.SUREFIRE_TIME.fullmatch(report.seconds(v))
