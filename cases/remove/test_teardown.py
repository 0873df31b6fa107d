"""Teardown: closing the uffd, munmap with EVENT_UNMAP, and a handler process that dies.

fs/userfaultfd.c userfaultfd_release(): when the last reference to the uffd goes, every VMA
is unregistered, ctx->released is set and all waiters are woken: a madvise sleeping on an
unread REMOVE carries on (userfaultfd_event_wait_completion() gives up once the context is
released) and threads blocked in handle_userfault() retry their fault on memory that is no
longer registered, so anonymous memory reads zero (ejc3/fcvm#739: "uffd closed before or during
a fault -> the faulting thread gets the zero page").  A handler process killed while holding
the last reference is such a release: the VMM's threads do not stay in D state (the opposite,
uffd held open but never served, hangs: e2b-dev/infra#644).

UFFD_FEATURE_EVENT_UNMAP (userfaultfd_unmap_prep/complete): munmap of a registered range sends
UFFD_EVENT_UNMAP with the unmapped [start, end) and waits for it to be read; without the
feature nothing is sent.
"""

from __future__ import annotations

import os
import signal

import pytest

from cases.remove.backings import BACKINGS, Backing, matrix
from cases.remove.support import (
    EVENT_REMOVE,
    HEAD,
    PROCESS_TOPOLOGIES,
    WAIT,
    WCHAN_EVENT,
    WCHAN_FAULT,
    check_no_errors,
    check_zero,
    madvise_async,
    ranges_of,
    read_async,
    returns_within,
)
from lib import check
from lib.check import note
from lib.kernel import abi, handler, libc
from lib.kernel.serve import flush, served
from lib.kernel.uffd import open_for

UNMAP = int(abi.Feature.EVENT_UNMAP)
MARK = 0x5A


def close_releases_madvise(b: Backing, keep_dup: bool = False) -> None:
    """No reader; madvise blocks on the REMOVE; closing the uffd lets it finish."""
    b.require(EVENT_REMOVE)
    region = b.map(1)
    libc.fill(region.addr, MARK, region.size)  # populated before registration: no fault later
    u = open_for(EVENT_REMOVE | b.missing_feature)
    u.register(region.addr, region.size, abi.RegisterMode.MISSING)
    dup = os.dup(u.fd) if keep_dup else -1  # negative control: not the last reference
    try:
        mad = madvise_async(region.addr, region.size, b.discard_advice)
        mad.wait_blocked(WCHAN_EVENT)
        note("closing the uffd with the REMOVE unread")
        u.close()
        mad.join(5)
        check_zero(region.addr, region.size, f"page after {b.punch_name} (unregistered by the release)")
    finally:
        if dup >= 0:
            os.close(dup)


@pytest.mark.parametrize(
    "b", matrix(BACKINGS, lambda b: f"closing the uffd releases a madvise blocked on REMOVE on {b}"))
def test_close_releases_madvise(b: Backing) -> None:
    close_releases_madvise(b)


def unmap_event(b: Backing, feature: bool) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """munmap the last page (the whole region when it has one) of a served region.

    Returns the UNMAP ranges the handler read and the unmapped range."""
    b.require(UNMAP if feature else 0)
    region = b.map(min(2, b.max_pages))
    start = region.page(region.npages - 1)
    with served(region, "thread", (UNMAP if feature else 0) | b.missing_feature, options=b.options()) as s:
        returns_within(lambda: libc.munmap(start, region.end - start), WAIT, "munmap")
        region._maps = [(region.addr, start - region.addr)] if start > region.addr else []
        flush(s.handler)
        st = s.stats()
    check_no_errors(st)
    return ranges_of(st.events, "UNMAP"), (start, region.end)


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"munmap sends UNMAP with UFFD_FEATURE_EVENT_UNMAP on {b}"))
def test_unmap_event(b: Backing) -> None:
    got, unmapped = unmap_event(b, True)
    check.eq(got, [unmapped], "UNMAP ranges")


@pytest.mark.parametrize(
    "b", matrix(BACKINGS, lambda b: f"munmap sends no UNMAP without UFFD_FEATURE_EVENT_UNMAP on {b}"))
def test_no_unmap_event(b: Backing) -> None:
    got, _ = unmap_event(b, False)
    check.eq(got, [], "UNMAP ranges without the feature")


def handler_death(b: Backing, topology: str, keep_ref: bool = False) -> None:
    """The handler process holds the only reference; a thread blocks in a fault; SIGKILL the
    handler: the fault resumes on unregistered memory (zeros), later accesses do not fault."""
    b.require()
    region = b.map(min(2, b.max_pages))
    u = open_for(b.missing_feature)
    h = handler.TOPOLOGIES[topology](u, region.addr, region.size, region.page_size, None, b.options()).start()
    killed = False
    try:
        u.register(region.addr, region.size, abi.RegisterMode.MISSING)
        keep = os.dup(u.fd) if keep_ref else -1  # negative control: the release never happens
        u.close()
        h.pause()
        reader = read_async(region.page(0), HEAD)
        reader.wait_blocked(WCHAN_FAULT)
        note(f"killing the {topology} handler {h.pid} with a thread blocked in a fault")
        os.kill(h.pid, signal.SIGKILL)
        killed = True
        h.sock.close()
        h._reap()
        try:
            check.eq(reader.join(5), bytes(HEAD), "the blocked read, resumed after the release")
            check_zero(region.addr, region.size, "the whole region (unregistered: no fault, zeros)")
        finally:
            if keep >= 0:
                os.close(keep)  # let the reader go so the case can end
    finally:
        if not killed:
            h.stop()
        u.close()


@pytest.mark.parametrize(
    "b,topology",
    matrix(BACKINGS, lambda b, t: f"a dying {t} handler releases the uffd, blocked faults resume on {b}",
           PROCESS_TOPOLOGIES))
def test_handler_death(b: Backing, topology: str) -> None:
    handler_death(b, topology)
