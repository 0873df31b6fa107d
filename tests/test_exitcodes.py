"""lib.runner.exitcodes: every outcome of a run mapped to kselftest's and git bisect run's codes.

Each row is a summary.json shape (host run, or a --kernel run with the watchdog's ``vm``
entry) and the two codes it must give; the end-to-end agreement of the host and --kernel paths
is in tests/test_vmrun.py, bisect-run.sh's own mapping in tests/test_bisect_run.py.
"""

from __future__ import annotations

import pytest

from lib.runner import exitcodes
from lib.runner.exitcodes import (
    BISECT_ABORT,
    BISECT_BAD,
    BISECT_GOOD,
    BISECT_SKIP,
    KSFT_FAIL,
    KSFT_PASS,
    KSFT_SKIP,
    USAGE,
)


def case(name: str, verdict: str, message: str = "", **extra) -> dict:
    return {"area": "demo", "name": name, "verdict": verdict, "message": message, **extra}


def run(*cases: dict, partial: str = "", vm: dict | None = None) -> dict:
    totals = dict.fromkeys(("pass", "fail", "xfail", "xpass", "skip", "error"), 0)
    for c in cases:
        totals[c["verdict"]] += 1
    s = {"cases": list(cases), "totals": totals, "partial": bool(partial), "partial_reason": partial}
    if vm is not None:
        s["vm"] = vm
    return s


BOOTED = {"stage": "EXITED", "verdict": "ok", "guest_exit_code": 0, "reason": "guest command exited"}
OK, SKIP = case("a", "pass"), case("b", "skip", "feature missing")

ROWS = [
    # id, summary, kselftest code, bisect code
    ("all pass", run(OK), KSFT_PASS, BISECT_GOOD),
    ("pass and skip", run(OK, SKIP), KSFT_PASS, BISECT_GOOD),
    ("xfail is no failure", run(OK, case("x", "xfail", "documented")), KSFT_PASS, BISECT_GOOD),
    ("fail", run(OK, case("f", "fail", "expected 1, got 2")), KSFT_FAIL, BISECT_BAD),
    ("timeout", run(case("t", "fail", "TIMEOUT after 60 s", timeout=True)), KSFT_FAIL, BISECT_BAD),
    ("signal", run(case("s", "fail", "child 12 killed by SIGSEGV")), KSFT_FAIL, BISECT_BAD),
    ("xpass", run(case("x", "xpass", "now passes")), KSFT_FAIL, BISECT_BAD),
    ("setup error", run(OK, case("e", "error", "setup: mmap failed")), KSFT_FAIL, BISECT_BAD),
    ("cannot test", run(OK, case("c", "error", "cannot test: no khugepaged progress")), KSFT_FAIL, BISECT_SKIP),
    ("harness error", run(OK, case("h", "error", "harness error: import failed")), KSFT_FAIL, BISECT_SKIP),
    ("harness error and a failure", run(case("h", "error", "harness error: x"), case("f", "fail", "leak")),
     KSFT_FAIL, BISECT_BAD),
    ("cannot test and a failure", run(case("c", "error", "cannot test: x"), case("f", "fail", "leak")),
     KSFT_FAIL, BISECT_BAD),
    ("all skipped", run(SKIP, case("b2", "skip", "no pool")), KSFT_SKIP, BISECT_SKIP),
    ("nothing ran", run(), KSFT_SKIP, BISECT_SKIP),
    ("interrupted", run(OK, partial="interrupted (SIGTERM)"), KSFT_FAIL, BISECT_SKIP),
    ("interrupted after a failure", run(case("f", "fail", "x"), partial="interrupted"), KSFT_FAIL, BISECT_BAD),
    ("vm: clean", run(OK, vm=BOOTED), KSFT_PASS, BISECT_GOOD),
    ("vm: no boot", run(vm={"stage": "KERNEL", "verdict": "no_boot", "reason": "did not start"}),
     KSFT_FAIL, BISECT_SKIP),
    ("vm: panic during a case", run(case("p", "fail", "kernel panic during the case: x"), partial="kernel panic",
                                    vm={**BOOTED, "stage": "GUEST", "verdict": "panic", "guest_exit_code": None}),
     KSFT_FAIL, BISECT_BAD),
    ("vm: deadline", run(OK, case("d", "error", "cannot test: VM deadline of 900 s reached"), partial="timeout",
                         vm={**BOOTED, "stage": "GUEST", "verdict": "timeout", "guest_exit_code": None}),
     KSFT_FAIL, BISECT_SKIP),
    ("vm: deadline between cases", run(OK, partial="kernel timeout",
                                       vm={**BOOTED, "stage": "GUEST", "verdict": "timeout",
                                           "guest_exit_code": None}),
     KSFT_FAIL, BISECT_SKIP),
    ("vm: harness problem", run(vm={"stage": "FIRMWARE", "verdict": "no_boot",
                                    "harness_problem": "qemu: invalid kernel header"}), USAGE, BISECT_ABORT),
    ("no report at all", None, USAGE, BISECT_ABORT),
]


@pytest.mark.parametrize("summary,ksft,bisect", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decide(summary, ksft, bisect):
    assert exitcodes.decide(summary, bisect=False).code == ksft
    assert exitcodes.decide(summary, bisect=True).code == bisect


def test_bisect_codes_are_what_git_bisect_run_expects():
    """git-bisect(1): 125 skips, 1..127 except 125 is bad, above 127 aborts."""
    assert BISECT_BAD in range(1, 128) and BISECT_BAD != BISECT_SKIP
    assert BISECT_SKIP == 125 and BISECT_GOOD == 0
    assert BISECT_ABORT > 127
    assert exitcodes.usage_code(bisect=True) == BISECT_ABORT and exitcodes.usage_code(bisect=False) == USAGE


def test_harness_problem_outranks_everything():
    """A broken harness proves nothing about the commit, even beside a failure."""
    s = run(case("f", "fail", "x"), vm={**BOOTED, "harness_problem": "the guest's run_suite.py rejected its argv"})
    d = exitcodes.decide(s, bisect=True)
    assert d.code == BISECT_ABORT and "rejected" in d.line()
    assert exitcodes.decide(run(OK), bisect=True, harness_problem="no report").code == BISECT_ABORT


def test_decision_line_names_the_failed_cases():
    d = exitcodes.decide(run(OK, case("leaky one", "fail", "leak"), case("h", "error", "harness error: x")),
                         bisect=True)
    assert d.line() == "bad (exit 1): failed: leaky one"
    d = exitcodes.decide(run(OK, case("c", "error", "cannot test: starved")), bisect=True)
    assert d.line().startswith("skip (exit 125): cannot test: c: cannot test: starved")
    assert exitcodes.decide(run(OK), bisect=True).line() == "good (exit 0)"


def test_kselftest_code_is_what_the_runner_writes():
    """The runner plugin writes summary.json's exit_code with exitcodes.decide, which for a run on
    this kernel is kselftest_code of its totals (interrupted: 1)."""
    from lib.runner import plugin

    assert plugin.exitcodes is exitcodes
    for cases, partial in [((OK,), ""), ((OK, SKIP), ""), ((SKIP,), ""), ((), ""), ((OK,), "interrupted"),
                           ((case("f", "fail", "leak"),), ""), ((case("x", "xpass", "gone"),), "")]:
        s = run(*cases, partial=partial)
        assert exitcodes.decide(s, bisect=False).code == exitcodes.kselftest_code(s["totals"], bool(partial))


@pytest.mark.parametrize(("name", "kwargs", "plain", "bisect"), [
    ("clean", {"summary": run(OK)}, KSFT_PASS, BISECT_GOOD),
    ("all skipped", {"summary": run(SKIP)}, KSFT_SKIP, BISECT_SKIP),
    ("a failure", {"summary": run(OK, case("f", "fail", "leak"))}, KSFT_FAIL, BISECT_BAD),
    ("interrupted before the start", {"summary": None, "started": False, "pytest_code": 2}, KSFT_FAIL, BISECT_SKIP),
    ("no report", {"summary": None, "pytest_code": 1}, KSFT_FAIL, BISECT_ABORT),
    ("internal error", {"summary": run(OK), "pytest_code": 3}, KSFT_PASS, BISECT_ABORT),
    ("reports not written", {"summary": run(OK), "write_failed": True}, KSFT_FAIL, BISECT_GOOD),
    ("all skipped, reports not written", {"summary": run(SKIP), "write_failed": True}, KSFT_FAIL, BISECT_SKIP),
    ("--kcidb not written", {"summary": run(SKIP), "kcidb_failed": True}, KSFT_FAIL, BISECT_SKIP),
])
def test_host_run_exit_code(name: str, kwargs: dict, plain: int, bisect: int) -> None:
    """run_suite.py's exit code for a run on this kernel is decided by exitcodes.host_run alone."""
    kwargs = {"pytest_code": 0, **kwargs}
    assert exitcodes.host_run(bisect=False, **kwargs).code == plain, name
    assert exitcodes.host_run(bisect=True, **kwargs).code == bisect, name


NO_REPORT = run(partial="no report from the guest",
                vm={**BOOTED, "guest_exit_code": 127})  # the guest's python not found: nothing ran


@pytest.mark.parametrize(("name", "runs", "plain", "bisect"), [
    ("every kernel passes", [run(OK), run(OK, vm=BOOTED)], KSFT_PASS, BISECT_GOOD),
    ("one kernel fails", [run(OK), run(case("f", "fail", "x"))], KSFT_FAIL, BISECT_BAD),
    ("a kernel gave no report", [run(OK), NO_REPORT], KSFT_FAIL, BISECT_SKIP),
    ("no report and a failure", [NO_REPORT, run(case("f", "fail", "x"))], KSFT_FAIL, BISECT_BAD),
    ("every kernel skipped everything", [run(SKIP), run(SKIP)], KSFT_SKIP, BISECT_SKIP),
    ("one skipped everything, one passed", [run(SKIP), run(OK)], KSFT_PASS, BISECT_SKIP),
])
def test_series_exit_code(name: str, runs: list, plain: int, bisect: int) -> None:
    """A --kernels series never exits 0 for a kernel it did not test (seen: two guests whose
    python was not found, the series exited 0)."""
    assert exitcodes.series(runs, bisect=False) == plain, name
    assert exitcodes.series(runs, bisect=True) == bisect, name


@pytest.mark.parametrize(("found", "how", "want"), [
    (True, "found", BISECT_BAD),
    (True, "neighbours could not be tested", BISECT_BAD),
    (False, "no kernel could be tested", BISECT_SKIP),
    (False, "no kernel could be tested; 2 round(s) of up to 2", BISECT_SKIP),
    (False, "the newest testable kernel is good", BISECT_GOOD),
])
def test_first_bad_exit_code(found: bool, how: str, want: int) -> None:
    """--find-first-bad: 1 when a first bad kernel was found, 125 when no kernel could be
    tested, 0 when the newest testable one is good."""
    assert exitcodes.first_bad(found, how) == want, how
