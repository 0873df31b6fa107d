"""TAP and JUnit output: format, and parsed back (junitparser), the two agree case by case."""

import io
import json
from xml.etree import ElementTree as ET

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped

from lib.runner import report

RESULTS = [
    report.CaseResult("missing", "zeropage on anon", "pass", duration=0.01),
    report.CaseResult("missing", "zeropage on hugetlb", "skip", "not enough HugeTLB pages"),
    report.CaseResult("cow", "vmsplice() + unmap in child with hugetlb (2048 kB)", "xfail", "upstream: hugetlb"),
    report.CaseResult("cow", "Basic COW after fork() with base page", "fail", "child saw the parent's write",
                      details="offset 0: 0xff != 0x01"),
    report.CaseResult("remove", "stale-source race # on anon", "fail", "timeout after 5s: waiting", timeout=True),
    report.CaseResult("remove", "broken fixture", "error", "setup: boom"),
    report.CaseResult("remove", "lucky", "xpass", "expected to fail"),
]


def render() -> str:
    out = io.StringIO()
    w = report.TapWriter([out])
    w.header(len(RESULTS))
    for r in RESULTS:
        w.start(r.name)
        w.result(r)
    w.finish()
    return out.getvalue()


def test_tap_lines():
    text = render()
    lines = text.splitlines()
    assert lines[:2] == ["TAP version 13", f"1..{len(RESULTS)}"]
    assert "ok 1 zeropage on anon" in lines
    assert "ok 2 zeropage on hugetlb # SKIP not enough HugeTLB pages" in lines
    assert "ok 3 vmsplice() + unmap in child with hugetlb (2048 kB) # XFAIL upstream: hugetlb" in lines
    assert "not ok 4 Basic COW after fork() with base page" in lines
    assert "# offset 0: 0xff != 0x01" in lines
    assert "not ok 5 stale-source race no. on anon # TIMEOUT timeout after 5s: waiting" in lines
    assert "not ok 6 broken fixture # error setup: boom" in lines
    assert "ok 7 lucky # XPASS expected to fail" in lines
    assert lines[-1] == "# Totals: pass:1 fail:2 xfail:1 xpass:1 skip:1 error:1"
    assert "# [RUN] zeropage on anon" in lines


def test_tap_parse_round_trip():
    parsed = report.parse_tap(render())
    assert [(n, v) for n, v, _ in parsed] == [(report.tap_name(r.name), r.verdict) for r in RESULTS]


def test_partial_and_plan_mismatch():
    out = io.StringIO()
    w = report.TapWriter([out])
    w.header(3)
    w.result(RESULTS[0])
    w.finish("interrupted (SIGTERM)")
    text = out.getvalue()
    assert "# PARTIAL RUN: interrupted (SIGTERM)" in text
    assert "# Planned tests != run tests (3 != 1)" in text


def test_junit_parses_and_agrees_with_tap(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(report.junit_xml(RESULTS, {"kernel.release": "6.18-test"}))
    xml = JUnitXml.fromfile(str(path))
    suites = {s.name: s for s in xml}
    assert set(suites) == {"kmm.run", "kmm.missing", "kmm.cow", "kmm.remove"}
    got = {}
    for s in suites.values():
        for c in s:
            assert c.classname == s.name.removeprefix("kmm.")
            assert c._elem.get("time") is not None, "elapsed time always set"
            kinds = {type(x) for x in c.result}
            for x in c.result:
                assert x.message, f"{c.name}: every failure/skip carries a message"
            if Failure in kinds:
                got[c.name] = "fail"
            elif Error in kinds:
                got[c.name] = "error"
            elif Skipped in kinds:
                got[c.name] = "skip"
            else:
                got[c.name] = "pass"
    want = {r.name: {"xfail": "skip", "xpass": "fail"}.get(r.verdict, r.verdict) for r in RESULTS}
    assert got == want


def _tree(**kw) -> ET.Element:
    return ET.fromstring(report.junit_xml(RESULTS, {"kernel.release": "6.18-test"}, **kw))


def test_run_facts_appear_once():
    root = _tree(run={"commit": "0123abc", "command": "run_suite.py remove"})
    props = root.findall(".//properties")
    assert len(props) == 1, "one properties block for the whole run"
    assert root.find("testsuite").get("name") == "kmm.run"
    values = {p.get("name"): p.get("value") for p in props[0]}
    assert values["kernel.release"] == "6.18-test"
    assert values["suite.commit"] == "0123abc" and values["suite.command"] == "run_suite.py remove"


def test_xfail_is_told_apart_from_skip():
    root = _tree()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    xf = cases["vmsplice() + unmap in child with hugetlb (2048 kB)"].find("skipped")
    sk = cases["zeropage on hugetlb"].find("skipped")
    assert (xf.get("type"), sk.get("type")) == ("xfail", "skip")
    assert xf.get("message") == "XFAIL: upstream: hugetlb"
    assert "verdict: xfail" in cases["vmsplice() + unmap in child with hugetlb (2048 kB)"].find("system-out").text
    assert cases["lucky"].find("failure").get("type") == "xpass"


def test_suite_timestamp_is_its_first_case_start():
    rs = [report.CaseResult("a", "late", "pass", started="2026-01-02T03:04:09.000Z"),
          report.CaseResult("a", "early", "pass", started="2026-01-02T03:04:05.500Z")]
    root = ET.fromstring(report.junit_xml(rs, {}, started=0.0))
    suite = root.findall("testsuite")[1]
    assert suite.get("timestamp") == "2026-01-02T03:04:05"
    assert "started: 2026-01-02T03:04:09.000Z" in suite.find("testcase").find("system-out").text


def test_interrupted_run_accounts_for_every_planned_case():
    planned = [report.Planned(r.area, r.name) for r in RESULTS[:3]] + [report.Planned("remove", "not reached")]
    root = ET.fromstring(report.junit_xml(RESULTS[:3], {}, planned=planned, partial="interrupted (SIGINT)"))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {r.name for r in RESULTS[:3]} | {"not reached", "run completed"}
    nr = cases["not reached"].find("skipped")
    assert (nr.get("type"), nr.get("message")) == ("notrun", "not run: interrupted (SIGINT)")
    err = cases["run completed"].find("error")
    assert err.get("message") == "run interrupted (SIGINT): 1 of 4 planned cases not run"
    assert root.get("errors") == "1" and root.get("tests") == "5"
    # a complete run has no such case
    root = ET.fromstring(report.junit_xml(RESULTS[:3], {}, planned=planned[:3]))
    assert root.get("errors") == "0" and "run completed" not in {c.get("name") for c in root.iter("testcase")}


def test_summary_lists_planned_and_not_run():
    planned = [report.Planned(r.area, r.name) for r in RESULTS] + [report.Planned("remove", "not reached")]
    d = report.summary(RESULTS, {}, partial="running", started=0.0, exit_code=None, planned=planned,
                       run={"commit": "abc"})
    assert d["exit_code"] is None and d["partial"] is True
    assert [p["name"] for p in d["planned"]] == [p.name for p in planned]
    assert d["not_run"] == ["not reached"]
    assert d["run"] == {"commit": "abc"}
    again = ET.fromstring(report.junit_from_summary(json.loads(json.dumps(d))))
    assert "not reached" in {c.get("name") for c in again.iter("testcase")}


def test_write_reports_replaces_both_or_neither(tmp_path, monkeypatch):
    d = report.summary(RESULTS, {}, partial="running", started=0.0, exit_code=None)
    report.write_reports(str(tmp_path), d)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(before) == {"junit.xml", "summary.json"}
    real_open = open
    calls = []

    def failing_open(path, *a, **k):  # the second file hits a full disk
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", failing_open)
    done = report.summary(RESULTS, {}, partial="", started=0.0, exit_code=0)
    with pytest.raises(OSError):
        report.write_reports(str(tmp_path), done)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before, "no file replaced, no temporary left"


def test_tap_writer_goes_on_when_a_stream_fails():
    class Full(io.StringIO):
        def write(self, s):
            raise OSError(28, "No space left on device")

    good, bad = io.StringIO(), Full()
    w = report.TapWriter([bad, good], ["results.tap", ""])
    w.header(1)
    w.result(RESULTS[0])
    assert good.getvalue().startswith("TAP version 13\n1..1\nok 1 ")
    assert w.errors == ["results.tap: No space left on device"]


def test_one_line_and_names():
    assert report.one_line("a\n  b\tc") == "a b c"
    assert "#" not in report.tap_name("x # y")
    assert len(report.one_line("x" * 1000)) == 300


def test_suite_version_outside_a_git_tree(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "9.8.7"\n')
    assert report.suite_version(str(tmp_path)) == {"version": "9.8.7", "commit": "unknown", "describe": "unknown"}


def test_suite_version_in_this_tree():
    import subprocess

    from tests.conftest import ROOT

    v = report.suite_version(str(ROOT))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git work tree")
    describe = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True)
    assert v["commit"] == head.stdout.strip()
    assert v["describe"] == describe.stdout.strip()


def test_one_verdict_vocabulary():
    """lib.runner.verdict.Verdict is what isolation produces and the reports read: TIMEOUT and
    SIGNAL are reported as failures (a timeout flagged), strings from a summary.json are the same
    verdicts, and the totals keep kselftest's order."""
    from lib.runner.verdict import REPORTED, Verdict

    assert [str(v) for v in REPORTED] == ["pass", "fail", "xfail", "xpass", "skip", "error"]
    assert list(report.Totals()) == list(REPORTED)
    t = report.CaseResult("a", "t", Verdict.TIMEOUT, "timeout after 1s")
    assert t.verdict is Verdict.FAIL and t.timeout and t.failed
    assert report.tap_result_line(1, t) == "not ok 1 t # TIMEOUT timeout after 1s"
    s = report.CaseResult("a", "s", Verdict.SIGNAL, "killed by SIGBUS")
    assert s.verdict is Verdict.FAIL and not s.timeout
    assert report.CaseResult("a", "x", "xfail").verdict is Verdict.XFAIL  # as read back from summary.json
    assert [v.failed for v in Verdict] == [False, True, False, True, False, True, True, True]
    assert json.loads(json.dumps(vars(t)))["verdict"] == "fail"
    with pytest.raises(ValueError):
        report.CaseResult("a", "n", "notrun")


def test_reported_message_of_an_outcome():
    """The plugin passes the isolation's outcome through: a failure's message on one line, a
    skip's and an expected failure's reason as given."""
    from lib.runner.isolation import Outcome
    from lib.runner.plugin import reported_message

    assert reported_message(Outcome("pass")) == ""
    assert reported_message(Outcome("fail", "one\ntwo")) == "one two"
    assert reported_message(Outcome("timeout", "x" * 400)) == "x" * 297 + "..."
    assert reported_message(Outcome("skip", "")) == "skipped"
    assert reported_message(Outcome("skip", "no THP")) == "no THP"
    assert reported_message(Outcome("xfail", "upstream documents it")) == "upstream documents it"
    assert reported_message(Outcome("error", "")) == "error"
