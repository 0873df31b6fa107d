"""Waiting for khugepaged by its progress, not by the clock.

How fast khugepaged scans is no kernel guarantee: it is a nice-19 kernel thread that a loaded
machine (or a TCG guest next to a kernel build) may starve for many seconds.  What the kernel
does guarantee (Documentation/admin-guide/mm/transhuge.rst, "khugepaged") is that a scan visits
every registered mm, so two more ``khugepaged/full_scans`` after a range was advised mean
khugepaged has looked at it (the wait of upstream's khugepaged.c).  The wait therefore follows
khugepaged's progress:

* the range's own state (``is_huge()``; ``region()`` for partial progress, e.g. how many
  windows are huge, from smaps AnonHugePages/FilePmdMapped or the folio orders),
* ``khugepaged/full_scans`` and ``khugepaged/pages_collapsed``,
* the khugepaged thread's CPU time (/proc/<pid>/stat utime+stime: it ran),

and ends

* collapsed, as soon as ``is_huge()``;
* not collapsed, once ``scans`` more full scans completed (a verdict the caller judges);
* when nothing of the above changed for ``stall`` seconds, or after ``bound`` seconds in all:
  not collapsed if ``min_scans`` full scans were seen (a wait where no collapse is expected:
  khugepaged may go idle once it found nothing to do), else ``lib.check.CannotTest`` --
  khugepaged could not be observed doing its work, which judges nothing about the kernel.

``wait`` is a pure function of its injected readers and clock, so the project's tests drive
it with fakes (tests/test_thp_collapse_wait.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lib import check

STALL_S = 20.0  # no progress at all for this long: khugepaged is not getting to our range
BOUND_S = 120.0  # the whole wait, however much progress is made
POLL_MAX_S = 0.1  # the poll interval grows to this (polling competes with the nice-19 thread)


@dataclass
class ScanResult:
    collapsed: bool
    scans: int  # full scans seen while waiting
    pages_collapsed: int  # increase of khugepaged/pages_collapsed
    seconds: float


@dataclass(frozen=True)
class Progress:
    """One observation of everything that moves when khugepaged works."""

    full_scans: int
    pages_collapsed: int
    cpu: int  # khugepaged's CPU time in clock ticks (-1: thread not found)
    region: object


def wait(
    is_huge: Callable[[], bool],
    read: Callable[[str], int],
    *,
    cpu: Callable[[], int] = lambda: -1,
    region: Callable[[], object] = lambda: None,
    scans: int = 2,
    min_scans: int = 2,
    stall: float = STALL_S,
    bound: float = BOUND_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    diag: Callable[[], str] = lambda: "",
) -> ScanResult:
    """Wait for a collapse or ``scans`` more full scans, following khugepaged's progress."""

    def observe() -> Progress:
        return Progress(read("full_scans"), read("pages_collapsed"), cpu(), region())

    t0 = clock()
    first = last = observe()
    last_change = t0
    interval = 0.001

    def result(collapsed: bool, p: Progress) -> ScanResult:
        return ScanResult(collapsed, p.full_scans - first.full_scans, p.pages_collapsed - first.pages_collapsed,
                          clock() - t0)

    while True:
        if is_huge():
            return result(True, observe())
        now = observe()
        t = clock()
        seen = now.full_scans - first.full_scans
        if seen >= scans:
            return result(False, now)
        if now != last:
            last, last_change = now, t
        stalled = t - last_change >= stall
        if stalled or t - t0 >= bound:
            if seen >= min_scans:
                return result(False, now)
            what = (f"khugepaged made no progress for {stall:g}s" if stalled else
                    f"khugepaged progressed but did not finish within {bound:g}s")
            ticks = f"+{now.cpu - first.cpu}" if now.cpu >= 0 and first.cpu >= 0 else "unknown"
            collapsed = now.pages_collapsed - first.pages_collapsed
            raise check.CannotTest(
                f"{what}: {seen} of {scans} full scans, pages_collapsed +{collapsed}, "
                f"khugepaged CPU ticks {ticks} in {t - t0:.1f}s" + (f" ({d})" if (d := diag()) else ""))
        sleep(interval)
        interval = min(interval * 2, POLL_MAX_S)


def thread_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (/proc/<pid>/stat), -1 when it cannot be read."""
    if not pid:
        return -1
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return -1
