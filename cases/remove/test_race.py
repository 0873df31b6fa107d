"""Deterministic races between a fault being served and a REMOVE, driven by handler barriers.

No sleeps: a worker serving page 1 is parked at a barrier point of lib.kernel.handler (``before_lock``:
before it enters the install gate; ``before_resolve``: about to fetch its source page, still
outside the gate), the racing madvise is issued, then the worker is released.  The handler runs two
workers so the serve loop keeps reading the uffd while one worker is parked.

Kernel facts used (fs/userfaultfd.c, mm/madvise.c): the REMOVE message is queued before the
range is zapped/punched and madvise waits until it is *read*; reading it never needs a lock a
worker holds, so madvise returns while a worker is parked (e2b
TestNoMadviseDeadlockWithInflightCopy); after the zap a UFFDIO_COPY into the range succeeds
again, so a worker that picked the source page *before* the REMOVE installs stale data into a
page the caller has just discarded (e2b TestStaleSourceRaceMissingAndRemove, "want 0, got
0xc3").  The page must read zero: that is what the handler's REMOVE bookkeeping is for.

Besides the handler's result (zeros), each case checks what the kernel itself shows: the
pagemap present bit before the REMOVE and after madvise returned, the REMOVE's range, and which
messages were delivered in what order (common.py's oracles, derived from handle_userfault()
queueing one message per fault that finds the page missing).  The handler oracles fail against
``Options(wrong_source_before_lock=True)``; the kernel oracles against stand-ins for a kernel
that zaps late, wrongly or not at all (tests/test_remove_negative.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cases.remove.backings import BACKINGS, Backing, matrix
from cases.remove.support import (
    EVENT_REMOVE,
    HEAD,
    TOPOLOGIES,
    WAIT,
    check_faults_before,
    check_no_errors,
    check_no_fault_after,
    check_one_remove,
    check_present,
    check_zero,
    delivered,
    header,
    make_source,
    read_async,
    returns_within,
)
from lib import check
from lib.check import note
from lib.kernel import libc
from lib.kernel.handler import BEFORE_LOCK, BEFORE_RESOLVE, REMOVED, Options
from lib.kernel.serve import Served, flush, served
from lib.kernel.tasks import wait_until

NPAGES = 2  # the racing page is the last one (the only one of a 1 GiB backing)
MADVISE_BUDGET = WAIT  # madvise must not wait for the parked worker (e2b allows it 2 s; we judge by state)


def punch(s: Served, addr: int, length: int, advice: int) -> None:
    """The REMOVE under test: madvise(2) (negative controls replace this in their isolated
    child to stand for a kernel that zaps late, wrongly or not at all)."""
    libc.madvise(addr, length, advice)


def _opts(b: Backing, options: Options | None) -> Options:
    """Two workers at least: the serve loop keeps reading while one worker is parked."""
    o = b.options(options)
    o.workers = max(o.workers, 2)
    return o


def _layout(b: Backing):
    n = min(NPAGES, b.max_pages)
    region = b.map(n)
    return region, make_source(region), n - 1


def _removed(h, page: int):
    return lambda: h.stats().states.get(page) == REMOVED


def _settled_count(s: Served) -> int:
    """Messages delivered so far, once the handler has handled what it read."""
    flush(s.handler)
    return len(delivered(s.stats()))


def _remove_while_parked(b: Backing, topology: str, options: Options | None, point: str,
                         check_read: Callable[[bytes, int], None] | None = None) -> None:
    """Park the worker serving the faulting page at ``point``, remove the whole region (madvise
    must return within its budget although the worker is parked), release the worker: the page
    must end zero.  ``check_read`` judges what the racing read returned.

    Kernel facts checked: the other page (populated first, on a two-page layout) is present
    before the REMOVE and absent once madvise returned, the faulting page is absent then too
    (its worker is parked before it could install anything); one REMOVE with the advised range
    was delivered, after the fault; once the worker filled the page, reading it again faults no
    more."""
    b.require(EVENT_REMOVE)
    region, src, target = _layout(b)
    addr, ps = region.page(target), region.page_size
    others = [region.page(i) for i in range(target)]
    with served(region, topology, EVENT_REMOVE | b.missing_feature, source=src, options=_opts(b, options)) as s:
        h = s.handler
        for i, a in enumerate(others):
            check.eq(libc.read(a, HEAD), header(i), f"page {i} populated from the source")
        check_present(others, True, "before the REMOVE")
        tok = h.install_barrier(target, point)
        reader = read_async(addr, HEAD)
        note(f"waiting for the worker to park {point}")
        h.wait_held(tok, WAIT)
        note(f"{b.punch_name} of the region while the faulting page's worker is parked {point}")
        returns_within(lambda: punch(s, region.addr, region.size, b.discard_advice), MADVISE_BUDGET, b.punch_name)
        check_present([*others, addr], False, f"once {b.punch_name} returned (the worker still parked)")
        wait_until(_removed(h, target), WAIT, "the handler to record the REMOVE")
        h.release(tok)
        got = reader.join()
        filled = _settled_count(s)
        if check_read:
            check_read(got, target)
        check_zero(addr, ps, "page read after the race")
        for a in others:
            check_zero(a, ps, "other page after the REMOVE")
        flush(h)
        st = s.stats()
    check_no_errors(st)
    check_one_remove(st, region.addr, region.end, "REMOVE delivered")
    check_faults_before(st, addr, ps, 1, "the parked fault")
    check_no_fault_after(st, addr, ps, filled, "page re-read after the race")


def stale_source_race(b: Backing, topology: str, options: Options | None = None) -> None:
    """Worker parked before the lock; the REMOVE lands; released, it must serve zeros."""
    def not_stale(got: bytes, target: int) -> None:
        check.true(got != header(target), "the racing read did not return the stale source page")

    _remove_while_parked(b, topology, options, BEFORE_LOCK, not_stale)


def madvise_while_parked(b: Backing, topology: str, options: Options | None = None) -> None:
    """Worker parked about to fetch its source page, outside the install gate: madvise returns
    within 2 s; the page ends zero."""
    _remove_while_parked(b, topology, options, BEFORE_RESOLVE)


def faulted_short_circuit(b: Backing, topology: str, options: Options | None = None) -> None:
    """A duplicate fault for a page another worker already served, parked before the lock.

    Two threads fault the page: one worker parks, the other installs the source page and the
    kernel wakes both threads.  The page is then removed; when the parked (now stale) fault is
    released, the handler must not resurrect the source page: the page reads zero.

    Kernel facts checked: both faults were delivered before the REMOVE (at least two messages:
    one per fault that found the page missing); the page is present before the REMOVE and
    absent once madvise returned (the parked fault cannot have installed it); one REMOVE with
    the page's range; and no fault for the page after it: the readers had returned before it,
    and the check reads the page only after the handler resolved every fault it had read.
    """
    b.require(EVENT_REMOVE)
    region, src, target = _layout(b)
    addr, ps = region.page(target), region.page_size
    with served(region, topology, EVENT_REMOVE | b.missing_feature, source=src, options=_opts(b, options)) as s:
        h = s.handler
        tok = h.install_barrier(target, BEFORE_LOCK)
        first = read_async(addr, HEAD)
        h.wait_held(tok, WAIT)
        second = read_async(addr, HEAD)
        check.eq(second.join(), header(target), "second reader gets the source page")
        check.eq(first.join(), header(target), "first reader, woken by the second install, gets it too")
        check_present([addr], True, "the served page before the REMOVE")
        pre = s.stats()
        returns_within(lambda: punch(s, addr, ps, b.discard_advice), MADVISE_BUDGET, b.punch_name)
        check_present([addr], False, f"once {b.punch_name} returned (the duplicate fault still parked)", pre)
        wait_until(_removed(h, target), WAIT, "the handler to record the REMOVE")
        h.release(tok)
        faults_read = len(pre.faults)

        def resolved() -> bool:
            st = h.stats()
            return st.missing + len(st.errors) >= faults_read

        # every fault read before the REMOVE resolved: booked only once installed (or EEXIST)
        wait_until(resolved, 10.0, f"the {faults_read} faults read before the REMOVE to be resolved")
        check_zero(addr, ps, "page after the stale duplicate fault was resolved")
        flush(h)
        st = s.stats()
    check_no_errors(st)
    rm = check_one_remove(st, addr, addr + ps, "REMOVE delivered")
    check_faults_before(st, addr, ps, 2, "two readers")
    check_no_fault_after(st, addr, ps, rm, "after the REMOVE (readers returned before it)")


def _id(what: str):
    return lambda b, t: f"{what} on {b.name} ({t} handler)"


@pytest.mark.parametrize("b,topology", matrix(BACKINGS, _id("stale-source race"), TOPOLOGIES))
def test_stale_source_race(b: Backing, topology: str) -> None:
    stale_source_race(b, topology)


@pytest.mark.parametrize("b,topology", matrix(BACKINGS, _id("madvise returns while a worker is parked"), TOPOLOGIES))
def test_madvise_while_parked(b: Backing, topology: str) -> None:
    madvise_while_parked(b, topology)


@pytest.mark.parametrize("b,topology", matrix(BACKINGS, _id("faulted short-circuit ordering"), TOPOLOGIES))
def test_faulted_short_circuit(b: Backing, topology: str) -> None:
    faulted_short_circuit(b, topology)
