"""KSM as the kernel shows it: /sys/kernel/mm/ksm (Documentation/admin-guide/mm/ksm.rst).

ksmd is started and tuned through the ``settings`` fixture (:func:`prepare`, in the pytest
process, journalled and restored after the case); a case only reads the counters and waits
for full scans.  ksm_functional_tests.c's ksm_merge() waits for two full scans after it
starts ksmd "such that any possible merging happened"; :func:`wait_full_scans` waits so with
a deadline, and :func:`wait_merged` waits scan by scan for a range to merge.  An expired wait
is judged by ksmd's progress: a ksmd that made no scan at all was starved or stopped
(CannotTest); one that scanned, but not enough times, is the kernel's doing.
"""

from __future__ import annotations

import os

from lib import check
from lib.kernel import libc, tasks
from lib.kernel.pagemap import Pagemap

KSM = "/sys/kernel/mm/ksm"
PAGE = libc.PAGE_SIZE
# what prepare() sets: ksmd running, a scan batch covering a case's few MiB at once, short sleeps
KNOBS = {"run": "1", "pages_to_scan": "4096", "sleep_millisecs": "10"}


def available() -> bool:
    return os.path.exists(f"{KSM}/run") and os.path.exists(f"{KSM}/full_scans")


def read(name: str) -> int:
    with open(f"{KSM}/{name}") as f:
        return int(f.read().split()[0])


def prepare(settings) -> None:
    """In the pytest process: start ksmd with :data:`KNOBS` (restored after the case)."""
    for name, value in KNOBS.items():
        settings.set(f"{KSM}/{name}", value)


def wait_full_scans(n: int = 2, timeout: float = 30.0) -> int:
    """Wait until ksmd completed ``n`` more full scans than now; returns the count reached."""
    start = read("full_scans")
    check.note(f"waiting for {n} KSM full scans (from {start})")
    try:
        tasks.wait_until(lambda: read("full_scans") >= start + n, timeout, f"{n} KSM full scans")
    except TimeoutError:
        done = read("full_scans") - start
        if done == 0:
            raise check.CannotTest(f"ksmd completed no full scan in {timeout}s (starved or stopped)") from None
        raise AssertionError(f"ksmd completed {done} of {n} full scans in {timeout}s") from None
    return read("full_scans")


def wait_merged(addr: int, size: int, max_scans: int = 6, timeout: float = 60.0) -> int:
    """Wait, one full scan at a time, until the range maps some PFN twice; returns the full
    scans waited, or ``max_scans + 1`` when it never did.  A range made mergeable while ksmd
    runs joins the scan list behind the cursor (mm/ksm.c __ksm_enter): the scan under way
    misses it, the next records its checksums, the one after merges: three scans, at most a
    few more with smart_scan skipping."""
    d = tasks.Deadline(timeout)
    for n in range(1, max_scans + 1):
        wait_full_scans(1, max(d.remaining(), 0.1))
        if range_maps_duplicates(addr, size):
            return n
    return max_scans + 1


def range_maps_duplicates(addr: int, size: int) -> bool:
    """ksm_functional_tests.c range_maps_duplicates: some PFN is mapped twice in the range
    (pages not present or without a PFN are ignored)."""
    with Pagemap() as pm:
        pfns = [e.pfn for e in pm.entries(addr, size // PAGE)]
    seen = [p for p in pfns if p]
    return len(seen) != len(set(seen))
