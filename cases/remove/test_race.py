"""Deterministic races between a fault being served and a REMOVE, driven by handler barriers.

No sleeps: a worker serving page 1 is parked at a barrier point of lib.handler (``before_lock``:
before it takes the settle read lock; ``before_resolve``: holding it, before it picks the
source), the racing madvise is issued, then the worker is released.  The handler runs two
workers so the serve loop keeps reading the uffd while one worker is parked.

Kernel facts used (fs/userfaultfd.c, mm/madvise.c): the REMOVE message is queued before the
range is zapped/punched and madvise waits until it is *read*; reading it never needs a lock a
worker holds, so madvise returns while a worker is parked (e2b
TestNoMadviseDeadlockWithInflightCopy); after the zap a UFFDIO_COPY into the range succeeds
again, so a worker that picked the source page *before* the REMOVE installs stale data into a
page the caller has just discarded (e2b TestStaleSourceRaceMissingAndRemove, "want 0, got
0xc3").  The page must read zero: that is what the handler's REMOVE bookkeeping is for.

Each oracle here fails against ``Options(wrong_source_before_lock=True)`` (tests/test_remove_
negative.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cases.remove.common import (
    BACKINGS,
    EV,
    HEAD,
    TOPOLOGIES,
    Backing,
    check_no_errors,
    check_zero,
    header,
    make_source,
    matrix,
    read_async,
    returns_within,
)
from lib import check, libc
from lib.child import note, wait_until
from lib.handler import BEFORE_LOCK, BEFORE_RESOLVE, REMOVED, Options
from lib.serve import served

NPAGES = 2  # the racing page is the last one (the only one of a 1 GiB backing)
MADVISE_BUDGET = 2.0  # seconds (e2b's madvise budget)


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


def _remove_while_parked(b: Backing, topology: str, options: Options | None, point: str,
                         check_read: Callable[[bytes, int], None] | None = None) -> None:
    """Park the worker serving the faulting page at ``point``, remove the page (madvise must
    return within its budget although the worker is parked), release the worker: the page must
    end zero.  ``check_read`` judges what the racing read returned."""
    b.require(EV)
    region, src, target = _layout(b)
    addr, ps = region.page(target), region.page_size
    with served(region, topology, EV | b.missing_feature, source=src, options=_opts(b, options)) as s:
        h = s.handler
        tok = h.install_barrier(target, point)
        reader = read_async(addr, HEAD)
        note(f"waiting for the worker to park {point}")
        h.wait_held(tok, 5.0)
        note(f"{b.punch_name} of the faulting page while its worker is parked {point}")
        returns_within(lambda: libc.madvise(addr, ps, b.punch), MADVISE_BUDGET, b.punch_name)
        wait_until(_removed(h, target), 5.0, "the handler to record the REMOVE")
        h.release(tok)
        got = reader.join(10)
        if check_read:
            check_read(got, target)
        check_zero(addr, ps, "page read after the race")
        st = s.stats()
    check_no_errors(st)


def stale_source_race(b: Backing, topology: str, options: Options | None = None) -> None:
    """Worker parked before the lock; the REMOVE lands; released, it must serve zeros."""
    def not_stale(got: bytes, target: int) -> None:
        check.true(got != header(target), "the racing read did not return the stale source page")

    _remove_while_parked(b, topology, options, BEFORE_LOCK, not_stale)


def madvise_while_parked(b: Backing, topology: str, options: Options | None = None) -> None:
    """Worker parked holding the settle read lock: madvise returns in 2 s; the page ends zero."""
    _remove_while_parked(b, topology, options, BEFORE_RESOLVE)


def faulted_short_circuit(b: Backing, topology: str, options: Options | None = None) -> None:
    """A duplicate fault for a page another worker already served, parked before the lock.

    Two threads fault page 1: one worker parks, the other installs the source page and the
    kernel wakes both threads.  The page is then removed; when the parked (now stale) fault is
    released, the handler must not resurrect the source page: the page reads zero.
    """
    b.require(EV)
    region, src, target = _layout(b)
    addr, ps = region.page(target), region.page_size
    with served(region, topology, EV | b.missing_feature, source=src, options=_opts(b, options)) as s:
        h = s.handler
        tok = h.install_barrier(target, BEFORE_LOCK)
        first = read_async(addr, HEAD)
        h.wait_held(tok, 5.0)
        second = read_async(addr, HEAD)
        check.eq(second.join(10), header(target), "second reader gets the source page")
        check.eq(first.join(10), header(target), "first reader, woken by the second install, gets it too")
        returns_within(lambda: libc.madvise(addr, ps, b.punch), MADVISE_BUDGET, b.punch_name)
        wait_until(_removed(h, target), 5.0, "the handler to record the REMOVE")
        h.release(tok)
        wait_until(lambda: h.stats().missing >= 2, 10.0, "the parked duplicate fault to be resolved")
        check_zero(addr, ps, "page after the stale duplicate fault was resolved")
        st = s.stats()
    check_no_errors(st)
    check.eq(len(st.faults), 2, "fault messages (two readers, nothing after the REMOVE)")


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
