"""Exit codes: the one place that decides what a run exits with.

Two contracts, both decided from a run's summary (summary.json's dict; a ``--kernel`` run's
summary carries a ``vm`` entry with the console watchdog's findings):

kselftest (a plain run; tools/testing/selftests/kselftest.h's KSFT_* values)
    0  every case passed or skipped (some passing)
    1  a case failed, timed out, errored or XPASSed; or the run was interrupted, the guest
       kernel did not boot, died, or hit the VM deadline
    4  every case skipped (or none ran)
    2  bad command line, or a harness problem (see below): nothing was judged

``--bisect`` (git bisect run's contract, git-bisect(1): 0 good, 1..127 except 125 bad,
125 skip this commit, anything else aborts the bisection)
    255 abort: a harness problem that is not the commit's fault (kernel image missing or not
        a kernel QEMU can load, virtme-ng/QEMU missing, our own guest command line broken,
        no report at all).  It is checked first: a broken harness proves nothing about the
        commit, and skipping every commit would hide it ("We cannot bisect more!").
    1   bad: some case failed (fail, timeout, killed by a signal, XPASS, the kernel died or
        splatted during it, an ``error`` other than ``cannot test:``/``harness error:``)
    125 cannot test: no case failed but the run could not judge the commit: the kernel did
        not boot, every case skipped, the run was interrupted or hit the VM deadline, or a
        case reported ``cannot test:``/``harness error:``
    0   good: everything else (cases passed, some may have skipped)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lib.runner.verdict import BAD, Verdict, of

KSFT_PASS = 0
KSFT_FAIL = 1
USAGE = 2
KSFT_SKIP = 4

BISECT_GOOD = 0
BISECT_BAD = 1
BISECT_SKIP = 125
#: Any code above 127 makes `git bisect run` stop; 255 is what a shell's `exit -1` gives.
BISECT_ABORT = 255

#: Messages of an ``error`` verdict that judges nothing about the kernel (lib.check.CannotTest
#: and conftest's module-import errors).
UNJUDGED_ERRORS = ("cannot test:", "harness error:")

#: Stages of the guest (lib.runner.vm_console.BootStage names) at which the guest command had run.
BOOTED_STAGES = ("GUEST", "EXITED")


def case_failed(case: Mapping[str, Any]) -> bool:
    """Does this case result (summary.json's ``cases`` entry) judge the kernel bad?"""
    verdict = of(str(case.get("verdict")))
    if verdict is Verdict.ERROR:
        return not str(case.get("message", "")).startswith(UNJUDGED_ERRORS)
    return verdict is not None and verdict.failed


def kselftest_code(totals: Mapping[str, int], partial: bool) -> int:
    """kselftest exit code from verdict totals: 1 on any failure or an interrupted run, 4 if
    everything skipped (or nothing ran), else 0."""
    if any(totals.get(v) for v in BAD) or partial:
        return KSFT_FAIL
    ran = sum(totals.values())
    if ran == 0 or totals.get(Verdict.SKIP, 0) == ran:
        return KSFT_SKIP
    return KSFT_PASS


@dataclass(frozen=True)
class Decision:
    """An exit code and the one line that explains it (printed as ``# bisect: ...``)."""

    code: int
    verdict: str  #: good, bad, skip, abort (bisect) or pass, fail, skip, usage (kselftest)
    reason: str
    failed: tuple[str, ...] = ()  #: names of the cases that judged the kernel bad

    def line(self) -> str:
        text = f"{self.verdict} (exit {self.code})"
        if self.failed:
            shown = ", ".join(self.failed[:8]) + (f" and {len(self.failed) - 8} more" if len(self.failed) > 8 else "")
            return f"{text}: failed: {shown}"
        return f"{text}: {self.reason}" if self.reason else text


def _harness_problem(summary: Mapping[str, Any] | None, given: str) -> str:
    if given:
        return given
    if summary is None:
        return "the run produced no report"
    return str((summary.get("vm") or {}).get("harness_problem") or summary.get("harness_problem") or "")


def _failed_names(cases: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(str(c.get("name", "?")) for c in cases if case_failed(c))


def _unjudged(summary: Mapping[str, Any]) -> str:
    """Why a run without failures cannot judge the commit, or '' when it can."""
    vm = summary.get("vm") or {}
    if vm and vm.get("stage") not in BOOTED_STAGES:
        return f"the kernel did not boot: {vm.get('reason') or vm.get('verdict')}"
    if vm.get("verdict") == "timeout":
        return f"VM deadline: {vm.get('reason')}"
    for c in summary.get("cases", []):
        if c.get("verdict") == Verdict.ERROR:
            return f"{c.get('name')}: {c.get('message')}"
    if summary.get("partial"):
        return f"interrupted: {summary.get('partial_reason') or 'the run did not finish'}"
    if vm and vm.get("guest_exit_code") is None and vm.get("verdict") != "ok":
        return f"the guest did not finish: {vm.get('reason')}"
    totals = summary.get("totals") or {}
    ran = sum(totals.values())
    if ran == 0:
        return "no case ran"
    if totals.get(Verdict.SKIP, 0) == ran:
        return "every case skipped"
    return ""


def decide(summary: Mapping[str, Any] | None, *, bisect: bool, harness_problem: str = "") -> Decision:
    """The exit code of a run (host or ``--kernel``), kselftest's or git bisect run's."""
    problem = _harness_problem(summary, harness_problem)
    if problem:
        return Decision(BISECT_ABORT, "abort", problem) if bisect else Decision(USAGE, "usage", problem)
    assert summary is not None
    failed = _failed_names(summary.get("cases", []))
    unjudged = _unjudged(summary)
    if bisect:
        if failed:
            return Decision(BISECT_BAD, "bad", "", failed)
        if unjudged:
            return Decision(BISECT_SKIP, "skip", f"cannot test: {unjudged}")
        return Decision(BISECT_GOOD, "good", "")
    totals = dict(summary.get("totals") or {})
    booted = not summary.get("vm") or (summary.get("vm") or {}).get("stage") in BOOTED_STAGES
    died = bool(summary.get("partial")) or not booted
    code = kselftest_code(totals, died)
    verdict = {KSFT_PASS: "pass", KSFT_FAIL: "fail", KSFT_SKIP: "skip"}[code]
    return Decision(code, verdict, unjudged if code == KSFT_FAIL and not failed else "", failed)


#: pytest.main's code for an internal error (pytest.ExitCode.INTERNAL_ERROR): a bug of ours.
PYTEST_INTERNAL_ERROR = 3


def host_run(summary: Mapping[str, Any] | None, *, bisect: bool, pytest_code: int, started: bool = True,
             write_failed: bool = False, kcidb_failed: bool = False) -> Decision:
    """The exit code of run_suite.py for a run on this kernel (the one place it is decided).

    ``summary``: the run's final summary.json data (None when the run wrote none);
    ``started``: the run got as far as its first report (an interrupt before that ran nothing);
    ``write_failed``: a report could not be written, ``kcidb_failed``: --kcidb could not be
    written (both count as failures; git bisect run is told about the kernel only).
    """
    if not started:
        why = "interrupted before the run started"
        return Decision(BISECT_SKIP, "skip", f"cannot test: {why}") if bisect else Decision(KSFT_FAIL, "fail", why)
    no_report = f"the run produced no report (pytest exit {pytest_code})"
    if bisect:
        problem = "" if summary is not None else no_report
        if pytest_code == PYTEST_INTERNAL_ERROR:
            problem = "internal error in the suite (pytest exit 3)"
        return decide(summary, bisect=True, harness_problem=problem)
    if summary is None:
        return Decision(KSFT_FAIL, "fail", no_report)
    d = decide(summary, bisect=False)
    if write_failed or kcidb_failed:
        why = "the results folder could not be written" if write_failed else "--kcidb could not be written"
        return Decision(KSFT_FAIL, "fail", why, d.failed)
    return d


def series(summaries: Iterable[Mapping[str, Any]], *, bisect: bool) -> int:
    """The exit code of a ``--kernels`` series without ``--find-first-bad``: each kernel's run
    decided as above, then the worst.  A kernel whose run did not finish (no report from its
    guest) fails the series: a series never claims success for a kernel it did not test.

    kselftest: 1 if any run fails, 4 if every run skipped everything, else 0.  git bisect run:
    1 if any run is bad, else 125 if any could not be judged, else 0.
    """
    decisions = [decide(s, bisect=bisect) for s in summaries]
    codes = {d.code for d in decisions}
    if bisect:
        for code in (BISECT_ABORT, BISECT_BAD, BISECT_SKIP):
            if code in codes:
                return code
        return BISECT_GOOD
    if USAGE in codes or KSFT_FAIL in codes:
        return KSFT_FAIL
    return KSFT_SKIP if codes == {KSFT_SKIP} else KSFT_PASS


def first_bad(found: bool, how: str) -> int:
    """The exit code of ``--kernels --find-first-bad``: 1 when it found the first bad kernel;
    else 125 when no kernel could be tested (``how``, the search's ending, says so), else 0
    (the newest testable kernel is good)."""
    if found:
        return BISECT_BAD
    return BISECT_SKIP if how.startswith(("no kernel", "cannot")) else BISECT_GOOD


def usage_code(bisect: bool) -> int:
    """Exit code for a bad command line: 2, or the abort code under ``--bisect`` (git bisect
    run would take 2 for "bad")."""
    return BISECT_ABORT if bisect else USAGE
