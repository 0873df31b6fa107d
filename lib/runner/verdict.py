"""The one verdict vocabulary of the runner: what the isolation layer concludes about a case run
and what every report, exit code, comparison and KCIDB status is computed from.

:func:`lib.runner.isolation.run_isolated` produces a :class:`Verdict`; the runner plugin passes
it through to the case's result; lib.runner.report (TAP, JUnit, summary.json),
lib.runner.exitcodes, lib.runner.kcidb, lib.runner.matrix_html and lib.runner.compare read it.

Verdict is a ``str`` enum whose values are the strings the files always held, so every file
format stays as it was: a summary.json ``"verdict"`` is one of :data:`REPORTED` (TIMEOUT and
SIGNAL are reported as ``fail``, a timeout with ``"timeout": true``), TAP's directives and
JUnit's elements follow kselftest (tools/testing/selftests/kselftest.h: ok, not ok, # SKIP,
# XFAIL, # XPASS; ksft_finished() fails a run on an XPASS).
"""

from __future__ import annotations

import enum


class Verdict(enum.StrEnum):
    """How one case run ended."""

    PASS = "pass"
    FAIL = "fail"  #: an oracle (check.*, assert) judged the kernel wrong
    XFAIL = "xfail"  #: failed as upstream documents (pytest.xfail with the reference)
    XPASS = "xpass"  #: passed although marked as an expected failure: fails the run
    SKIP = "skip"  #: a probe said the feature is not there
    ERROR = "error"  #: could not judge (check.CannotTest, harness error, setup failure, no verdict)
    TIMEOUT = "timeout"  #: the isolation deadline expired (reported as a failure)
    SIGNAL = "signal"  #: the case process was killed by a signal (reported as a failure)

    @property
    def reported(self) -> Verdict:
        """The verdict as the reports name it: TIMEOUT and SIGNAL are failures."""
        return Verdict.FAIL if self in (Verdict.TIMEOUT, Verdict.SIGNAL) else self

    @property
    def failed(self) -> bool:
        """Does this verdict fail the run (kselftest: not ok, or an XPASS)?"""
        return self.reported in BAD

    @property
    def judged_good(self) -> bool:
        """Did the case run and find the kernel behaving as specified (or as documented)?"""
        return self in GOOD


#: The verdicts a report holds, in the order of TAP's ``# Totals:`` line and summary.json's totals.
REPORTED: tuple[Verdict, ...] = (Verdict.PASS, Verdict.FAIL, Verdict.XFAIL, Verdict.XPASS, Verdict.SKIP,
                                 Verdict.ERROR)
#: Verdicts that fail a run.
BAD: tuple[Verdict, ...] = (Verdict.FAIL, Verdict.ERROR, Verdict.XPASS)
#: Verdicts of a case that ran and found the kernel as specified.
GOOD: tuple[Verdict, ...] = (Verdict.PASS, Verdict.XFAIL)


def of(value: str) -> Verdict | None:
    """The Verdict a report's string names, None for one that is not a verdict (``notrun``)."""
    try:
        return Verdict(value)
    except ValueError:
        return None
