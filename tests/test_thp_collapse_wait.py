"""Negative controls for the khugepaged wait (cases/thp_collapse/khwait.py) and for how the
collapse context turns its outcome into a verdict.

The wait is driven by fakes: a clock that advances only when the wait sleeps, and sysfs
counters / thread CPU time / region state scripted against that clock.  What must hold:

* a khugepaged that makes no progress at all ends as check.CannotTest ("cannot test"),
  never as a pass or an AssertionError (a kernel failure);
* progress followed by a completed collapse returns collapsed, however slow the progress;
* progress that goes on long after ``stall`` keeps the wait alive (it extends while
  progress is made), up to ``bound``, and then is CannotTest too;
* a collapse that never happens while khugepaged completes its full scans returns
  "not collapsed", which the collapse context judges as a failure (check_huge);
* where no collapse is expected, ``min_scans`` full scans then silence is a verdict, fewer
  is CannotTest.
"""

from __future__ import annotations

import pytest

from cases.thp_collapse import khwait
from lib import check


class FakeKernel:
    """Counters scripted on a fake clock: ``events`` maps a time to counter increments."""

    def __init__(self, scans_at=(), collapsed_at=None, cpu_every=None) -> None:
        self.t = 0.0
        self.scans_at = sorted(scans_at)
        self.collapsed_at = collapsed_at
        self.cpu_every = cpu_every
        self.sleeps = 0

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s > 0, "the wait must never busy-loop"
        self.sleeps += 1
        self.t += s

    def read(self, name: str) -> int:
        if name == "full_scans":
            return 100 + sum(1 for x in self.scans_at if x <= self.t)
        if name == "pages_collapsed":
            return 7 + (512 if self.huge() else 0)
        raise KeyError(name)

    def cpu(self) -> int:
        return int(self.t / self.cpu_every) if self.cpu_every else 5

    def huge(self) -> bool:
        return self.collapsed_at is not None and self.t >= self.collapsed_at

    def wait(self, **kw) -> khwait.ScanResult:
        kw.setdefault("stall", 20.0)
        kw.setdefault("bound", 120.0)
        return khwait.wait(self.huge, self.read, cpu=self.cpu, clock=self.clock, sleep=self.sleep, **kw)


def test_no_progress_at_all_is_cannot_test_not_a_failure():
    k = FakeKernel()
    with pytest.raises(check.CannotTest, match=r"made no progress for 20s: 0 of 2 full scans") as e:
        k.wait()
    assert not isinstance(e.value, AssertionError)
    assert 20.0 <= k.t < 21.0, k.t  # gave up at the stall limit, not before, not much after


def test_no_progress_is_cannot_test_also_when_no_collapse_is_expected():
    with pytest.raises(check.CannotTest):
        FakeKernel().wait(min_scans=1)


def test_progress_then_collapse_passes_even_when_slow():
    # a full scan after 15 s, the collapse 18 s later: each gap below the 20 s stall limit
    k = FakeKernel(scans_at=(15,), collapsed_at=33)
    r = k.wait()
    assert r.collapsed and r.scans == 1 and r.pages_collapsed == 512, r
    assert 33 <= r.seconds < 34


def test_wait_extends_while_progress_is_made_past_the_stall_limit():
    # full scans every 19 s: never 20 s without progress, 2 scans at 38 s -> a verdict at 38 s
    k = FakeKernel(scans_at=(19, 38))
    r = k.wait()
    assert not r.collapsed and r.scans == 2 and 38 <= r.seconds < 39, r


def test_cpu_time_alone_counts_as_progress_until_the_bound():
    # khugepaged runs (its CPU time grows) but never completes a full scan: CannotTest at bound
    k = FakeKernel(cpu_every=5.0)
    with pytest.raises(check.CannotTest, match=r"progressed but did not finish within 120s: 0 of 2 full scans"):
        k.wait()
    assert 120 <= k.t < 121


def test_region_state_counts_as_progress():
    k = FakeKernel()
    state = {"n": 0}

    def region() -> int:  # one more window collapses every 10 s
        state["n"] = int(k.t // 10)
        return state["n"]

    with pytest.raises(check.CannotTest, match="did not finish within 60s"):
        k.wait(region=region, bound=60.0)


def test_scans_without_a_collapse_return_not_collapsed_for_the_caller_to_fail():
    k = FakeKernel(scans_at=(1, 2, 3))
    r = k.wait()
    assert not r.collapsed and r.scans == 2, r
    assert r.seconds < 3


def test_one_scan_then_silence_is_a_verdict_only_where_no_collapse_is_expected():
    r = FakeKernel(scans_at=(1,)).wait(min_scans=1)
    assert not r.collapsed and r.scans == 1
    with pytest.raises(check.CannotTest, match="1 of 2 full scans"):
        FakeKernel(scans_at=(1,)).wait(min_scans=2)


def test_collapse_seen_before_any_scan_counts():
    k = FakeKernel(collapsed_at=0.0)
    r = k.wait()
    assert r.collapsed and r.scans == 0 and k.sleeps == 0


def test_poll_interval_is_bounded():
    k = FakeKernel(scans_at=(1, 2))
    k.wait()
    # 1 ms doubling to POLL_MAX_S: about 2 s / 0.1 s polls, never thousands
    assert k.sleeps < 2 / khwait.POLL_MAX_S + 20, k.sleeps


def test_thread_cpu_ticks_reads_this_process_and_rejects_a_missing_one():
    import os

    assert khwait.thread_cpu_ticks(os.getpid()) >= 0
    assert khwait.thread_cpu_ticks(0) == -1
    assert khwait.thread_cpu_ticks(2**22 + 12345) == -1
