"""TAP and JUnit output: format, and parsed back (junitparser), the two agree case by case."""

import io

from junitparser import Error, Failure, JUnitXml, Skipped

from lib import report

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
    assert set(suites) == {"kmm.missing", "kmm.cow", "kmm.remove"}
    got = {}
    for s in suites.values():
        assert {p.name: p.value for p in s.properties()}["kernel.release"] == "6.18-test"
        for c in s:
            assert c.classname == s.name.removeprefix("kmm.")
            assert c.time > 0, "elapsed time always set"
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


def test_one_line_and_names():
    assert report.one_line("a\n  b\tc") == "a b c"
    assert "#" not in report.tap_name("x # y")
    assert len(report.one_line("x" * 1000)) == 300
