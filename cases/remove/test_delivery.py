"""Delivery of UFFD_EVENT_REMOVE: which calls send it, and with which range.

Documentation/admin-guide/mm/userfaultfd.rst: with UFFD_FEATURE_EVENT_REMOVE, MADV_REMOVE and
MADV_DONTNEED on a registered range send UFFD_EVENT_REMOVE with ``remove.start``/``remove.end``.
mm/madvise.c calls userfaultfd_remove(vma, start, end) per VMA with the advised range, after
madvise_dontneed_free_valid_vma(), which for hugetlb requires a huge-page-aligned start
(EINVAL) and rounds the end *down* to the huge page (a remainder shorter than a huge page
sends nothing and is not discarded).  The event goes to the context the VMA is registered
with, whatever the mode (e2b TestRemoveEventAfterWPReRegister): none after UFFDIO_UNREGISTER,
again after a WP-only re-registration; none when the feature was not negotiated.
madvise_remove() rejects a mapping without a file (EINVAL) or not shared-writable (EACCES)
before it would send anything.  fallocate(FALLOC_FL_PUNCH_HOLE) on the backing file does not
go through madvise and sends no REMOVE (e2b-dev/firecracker#18, which switched to MADV_REMOVE
for that reason): the handler is not told, the next access is a plain MISSING fault.

The messages are read straight from the uffd while the madvise runs in a thread, draining
until the call returns: one call may produce several messages, their ranges must tile the
advised range exactly.
"""

from __future__ import annotations

import errno

import pytest

from cases.remove.backings import BACKINGS, PRIVATE, SHARED, Backing, matrix
from cases.remove.support import (
    EVENT_REMOVE,
    check_ranges_cover,
    drain,
    fault_records,
    fmt_ranges,
    header,
    madvise_async,
    read_async,
    served_remove,
)
from lib import check
from lib.kernel import abi, libc, memory
from lib.kernel.tasks import Deadline
from lib.kernel.uffd import Userfaultfd, open_for


def advise_collect(u: Userfaultfd, addr: int, length: int, advice: int, timeout: float = 5.0):
    """Run madvise in a thread, reading ``u`` until it returns: (messages, OSError or None)."""
    a = madvise_async(addr, length, advice)
    msgs = []
    d = Deadline(timeout)
    while not a.done() and not d.expired():
        msgs += drain(u, 0.01)
    err = None
    try:
        a.join(d.remaining() + 0.5)
    except OSError as e:
        err = e
    msgs += drain(u, 0)
    return msgs, err


def removes(msgs) -> list[tuple[int, int]]:
    other = [str(m) for m in msgs if m.event != abi.Event.REMOVE]
    check.eq(other, [], "messages other than REMOVE")
    return [(m.start, m.end) for m in msgs]


def span(region: memory.Region) -> tuple[int, int]:
    """The advised range: pages 1..2 of 4, the whole region when it has one page."""
    if region.npages == 1:
        return region.addr, region.end
    return region.page(1), region.page(min(3, region.npages))


def _registered(b: Backing, npages: int, features: int, mode: int = abi.RegisterMode.MISSING):
    region = b.map(npages)
    u = open_for(features | b.missing_feature)
    u.register(region.addr, region.size, mode)
    return region, u


# ---------------------------------------------------------------------------------------


def remove_range_exact(b: Backing, advice: int) -> None:
    b.require(EVENT_REMOVE)
    region, u = _registered(b, min(4, b.max_pages), EVENT_REMOVE)
    with u:
        start, end = span(region)
        msgs, err = advise_collect(u, start, end - start, advice)
        check.eq(err, None, f"madvise({abi.Madv(advice).name})")
        check_ranges_cover(removes(msgs), start, end, "REMOVE ranges")


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"MADV_DONTNEED sends REMOVE for the advised range on {b}"))
def test_dontneed_range(b: Backing) -> None:
    remove_range_exact(b, abi.Madv.DONTNEED)


@pytest.mark.parametrize("b", matrix(SHARED, lambda b: f"MADV_REMOVE sends REMOVE for the advised range on {b.name}"))
def test_madv_remove_range(b: Backing) -> None:
    remove_range_exact(b, abi.Madv.REMOVE)


def madv_remove_refused(b: Backing) -> None:
    """No file (anon): EINVAL; a file mapped private (hugetlb): EACCES.  Nothing is sent."""
    b.require(EVENT_REMOVE)
    region, u = _registered(b, 1, EVENT_REMOVE)
    with u:
        msgs, err = advise_collect(u, region.addr, region.size, abi.Madv.REMOVE)
        want = errno.EACCES if b.hugetlb else errno.EINVAL
        check.eq(err.errno if err else None, want, "madvise(MADV_REMOVE) errno")
        check.eq([str(m) for m in msgs], [], "messages")


@pytest.mark.parametrize("b", matrix(PRIVATE, lambda b: f"MADV_REMOVE is refused without a REMOVE on {b.name}"))
def test_madv_remove_private_refused(b: Backing) -> None:
    madv_remove_refused(b)


def none_after_unregister(b: Backing, unregister: bool = True) -> None:
    b.require(EVENT_REMOVE)
    region, u = _registered(b, 1, EVENT_REMOVE)
    with u:
        if unregister:
            u.unregister(region.addr, region.size)
        msgs, err = advise_collect(u, region.addr, region.size, abi.Madv.DONTNEED)
        check.eq(err, None, "madvise(MADV_DONTNEED)")
        check.eq([str(m) for m in msgs], [], "messages after UFFDIO_UNREGISTER")


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"no REMOVE after UFFDIO_UNREGISTER on {b.name}"))
def test_none_after_unregister(b: Backing) -> None:
    none_after_unregister(b)


def again_after_wp_reregister(b: Backing, reregister: bool = True) -> None:
    b.require(EVENT_REMOVE | b.wp_feature)
    region, u = _registered(b, 1, EVENT_REMOVE | b.wp_feature)
    with u:
        u.unregister(region.addr, region.size)
        if reregister:
            u.register(region.addr, region.size, abi.RegisterMode.WP)
        msgs, err = advise_collect(u, region.addr, region.size, abi.Madv.DONTNEED)
        check.eq(err, None, "madvise(MADV_DONTNEED)")
        check_ranges_cover(removes(msgs), region.addr, region.end, "REMOVE ranges (WP-only registration)")


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"REMOVE again after a WP-only re-register on {b.name}"))
def test_again_after_wp_reregister(b: Backing) -> None:
    again_after_wp_reregister(b)


def none_without_feature(b: Backing, features: int = 0) -> None:
    b.require(features)
    region, u = _registered(b, 1, features)
    with u:
        msgs, err = advise_collect(u, region.addr, region.size, b.discard_advice)
        check.eq(err, None, b.punch_name)
        check.eq([str(m) for m in msgs], [], "messages without the feature")


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"no REMOVE without UFFD_FEATURE_EVENT_REMOVE on {b.name}"))
def test_none_without_feature(b: Backing) -> None:
    none_without_feature(b)


def hugetlb_dontneed_rounds_end_down(b: Backing, halves: int = 3) -> None:
    """Length 1.5 huge pages (``halves`` half pages): REMOVE covers one huge page, the second
    keeps its data."""
    b.require(EVENT_REMOVE)
    region = b.map(2)
    hp = region.page_size
    libc.fill(region.addr, 0x5A, region.size)
    u = open_for(EVENT_REMOVE | b.missing_feature)
    with u:
        u.register(region.addr, region.size, abi.RegisterMode.MISSING)
        msgs, err = advise_collect(u, region.addr, halves * hp // 2, abi.Madv.DONTNEED)
        check.eq(err, None, "madvise(MADV_DONTNEED)")
        check_ranges_cover(removes(msgs), region.addr, region.addr + hp, "REMOVE ranges")
        check.true(libc.is_uniform(region.page(1), 0x5A, hp), "the second huge page keeps its data (no fault)")


@pytest.mark.parametrize("b", matrix([b for b in BACKINGS if b.hugetlb and b.max_pages >= 2],
                                     lambda b: f"hugetlb MADV_DONTNEED rounds the end down on {b.name}"))
def test_hugetlb_dontneed_rounds_end_down(b: Backing) -> None:
    hugetlb_dontneed_rounds_end_down(b)


def hugetlb_dontneed_unaligned_start(b: Backing, offset: int = libc.PAGE_SIZE) -> None:
    b.require(EVENT_REMOVE)
    region, u = _registered(b, 1, EVENT_REMOVE)
    with u:
        msgs, err = advise_collect(u, region.addr + offset, region.page_size - offset, abi.Madv.DONTNEED)
        check.eq(err.errno if err else None, errno.EINVAL, "madvise(MADV_DONTNEED) errno")
        check.eq([str(m) for m in msgs], [], "messages")


@pytest.mark.parametrize("b", matrix([b for b in BACKINGS if b.hugetlb],
                                     lambda b: f"hugetlb MADV_DONTNEED with an unaligned start is EINVAL on {b.name}"))
def test_hugetlb_dontneed_unaligned_start(b: Backing) -> None:
    hugetlb_dontneed_unaligned_start(b)


# ---------------------------------------------------------------------------------------


def punch_hole_unnoticed(b: Backing, via_madvise: bool = False) -> list[dict]:
    """fallocate(PUNCH_HOLE) on a served memfd page; returns the handler's events."""
    with served_remove(b, 1) as (region, s):
        libc.write(region.addr + 100, b"punch me")
        if via_madvise:  # negative control: the call that does tell the handler
            libc.madvise(region.addr, region.page_size, abi.Madv.REMOVE)
        else:
            libc.fallocate(region.fd, abi.FALLOC_FL_PUNCH_HOLE | abi.FALLOC_FL_KEEP_SIZE, 0, region.page_size)
        reread = read_async(region.addr, 64).join()
        st = s.stats()
    check.eq(st.errors, [], "handler errors")
    check.eq(len(st.faults), 2, "MISSING faults (first touch, then the access after the punch)" + fault_records(st))
    check.eq(reread, header(0), "the re-access is served from the source again (the handler was not told)")
    return st.events


def check_no_remove(events: list[dict], what: str) -> None:
    rs = [(e["start"], e["end"]) for e in events if e["event"] == "REMOVE"]
    if rs:
        raise AssertionError(f"{what}: REMOVE sent: {fmt_ranges(rs)}")


@pytest.mark.parametrize("b", matrix([b for b in SHARED if b.file_backed],
                                     lambda b: f"fallocate(PUNCH_HOLE) sends no REMOVE on {b.name}"))
def test_punch_hole_sends_nothing(b: Backing) -> None:
    check_no_remove(punch_hole_unnoticed(b), "fallocate(PUNCH_HOLE)")
