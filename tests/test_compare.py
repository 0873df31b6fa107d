"""--compare and the --kernels verdict table, on synthetic summaries."""

from lib.runner import compare


def summ(**cases):
    totals = {v: 0 for v in ("pass", "fail", "xfail", "xpass", "skip", "error")}
    for v in cases.values():
        totals[v] += 1
    return {"totals": totals, "cases": [{"name": n.replace("_", " "), "verdict": v} for n, v in cases.items()]}


def test_compare_classifies_changes():
    a = summ(case_a="pass", case_b="fail", case_c="pass", case_d="pass", case_e="skip", gone="pass")
    b = summ(case_a="fail", case_b="pass", case_c="skip", case_d="pass", case_e="pass", new="pass")
    c = compare.compare(a, b)
    assert c.regressed == [("case a", "pass", "fail")]
    assert c.fixed == [("case b", "fail", "pass")]
    assert c.newly_skipped == [("case c", "pass", "skip")]
    assert c.newly_run == [("case e", "skip", "pass")]
    assert c.added == [("new", "pass")] and c.removed == [("gone", "pass")]
    assert c.unchanged == 1 and c.exit_code == 1
    text = compare.format_comparison(c, "A", "B")
    assert "REGRESSED" in text and "case a" in text


def test_no_regression_exit_0():
    a = summ(x="fail")
    b = summ(x="pass")
    assert compare.compare(a, b).exit_code == 0
    assert compare.compare(a, a).exit_code == 0


def test_skip_to_fail_is_a_regression():
    assert compare.compare(summ(x="skip"), summ(x="error")).regressed == [("x", "skip", "error")]


def test_verdict_table():
    t = compare.verdict_table([("6.1", summ(a="skip", b="pass")), ("6.12", summ(a="pass", b="fail")),
                               ("broken", None)])
    lines = t.splitlines()
    assert lines[0].split() == ["case", "6.1", "6.12", "broken"]
    assert lines[1].split() == ["a", "skip", "ok", "-"]
    assert lines[2].split() == ["b", "ok", "FAIL", "-"]
    assert "no run" in lines[-1]
