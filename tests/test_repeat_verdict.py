"""--repeat: which outcome speaks for a case run several times (lib.runner.plugin.repeat_verdict).

A repeat that could not judge the kernel (``cannot test:``) must neither make a case flaky nor
hide a failure; repeats that judged differently are flaky.
"""

from __future__ import annotations

import pytest

from lib.runner.isolation import Outcome
from lib.runner.plugin import repeat_verdict

P = Outcome("pass")
F = Outcome("fail", "leak")
S = Outcome("skip", "no page")
C = Outcome("error", "cannot test: khugepaged made no progress")
E = Outcome("error", "case process exited with status 3 without a verdict")


@pytest.mark.parametrize(
    ("outcomes", "kind", "message", "flaky"),
    [
        ([P, P, P], "pass", "", False),
        ([P, F, P], "fail", "leak", True),
        ([F, F], "fail", "leak", False),
        ([P, C, P], "error", C.message, False),  # cannot test, not a flaky failure
        ([C, F, F], "fail", "leak", False),  # a cannot-test repeat does not hide a failure
        ([C, F, P], "fail", "leak", True),
        ([C, C], "error", C.message, False),
        ([P, E], "error", E.message, True),  # any other error is judged
        ([S, S], "skip", "no page", False),
    ],
    ids=["all pass", "pass/fail flaky", "all fail", "pass with a cannot-test", "cannot-test then fails",
         "cannot-test, fail, pass", "all cannot test", "other error is judged", "all skip"],
)
def test_repeat_verdict(outcomes: list[Outcome], kind: str, message: str, flaky: bool) -> None:
    final, is_flaky = repeat_verdict(outcomes)
    assert (final.kind, final.message, is_flaky) == (kind, message, flaky)
