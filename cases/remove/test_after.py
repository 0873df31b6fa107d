"""What the memory looks like after a REMOVE was read.

mm/madvise.c, Documentation/admin-guide/mm/userfaultfd.rst and e2b's pinned facts (A.7):
* private memory (anon, MAP_PRIVATE hugetlb): MADV_DONTNEED drops the pages; the next access
  is a MISSING fault again, and the handler, which knows the page was removed, serves zeros:
  the data written before is gone (e2b TestRemoveThenFault, uffd zero-fill after REMOVE).
* shared memory (shmem, memfd, hugetlbfs): MADV_DONTNEED only zaps the page tables; the page
  cache keeps the content, the next access maps it again without any uffd event.  MADV_REMOVE
  punches the range out of the file: the next access is a MISSING fault, served with zeros.
* hugetlbfs MADV_REMOVE over a range not aligned to the huge page (fs/hugetlbfs/inode.c
  hugetlbfs_punch_hole(): whole pages inside are removed, hugetlbfs_zero_partial_page() zeroes
  the partial head/tail in place) still reports the advised, unaligned range in the message
  (e2b PR #3002); the partial pages stay mapped and keep their bytes outside the range.
"""

from __future__ import annotations

import pytest

from cases.remove.backings import BACKINGS, HUGETLBFS, PRIVATE, SHARED, Backing, matrix
from cases.remove.support import (
    EVENT_REMOVE,
    HEAD,
    TOPOLOGIES,
    check_no_errors,
    check_ranges_cover,
    check_zero,
    fault_records,
    make_source,
    ranges_of,
    read_async,
    served_remove,
)
from lib import check
from lib.kernel import abi, libc
from lib.kernel.handler import REMOVED, ZERO, Options, Stats
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import flush, served

MARK = 0x5A


def _faults_at(st: Stats, addr: int, ps: int) -> int:
    return sum(1 for f in st.faults if f["address"] & ~(ps - 1) == addr)


def refault_after(b: Backing, topology: str, advice: int, options: Options | None = None) -> tuple[bool, int]:
    """Write the last page, advise it away, read it again.

    Returns (page reads zero, MISSING faults on the page); asserts the REMOVE range.
    """
    with served_remove(b, min(2, b.max_pages), topology, options) as (region, s):
        addr, ps = region.page(region.npages - 1), region.page_size
        libc.fill(addr, MARK, ps)
        libc.madvise(addr, ps, advice)
        read_async(addr, HEAD).join()  # a thread: the access may be a fault again
        zero = libc.is_uniform(addr, 0, ps)
        kept = libc.is_uniform(addr, MARK, ps)
        flush(s.handler)
        st = s.stats()
    check_no_errors(st)
    check_ranges_cover(ranges_of(st.events), addr, addr + ps, "REMOVE ranges")
    if not zero and not kept:
        raise AssertionError(f"page after {abi.Madv(advice).name} is neither zeros nor the old data: "
                             f"{libc.read(addr, 16).hex()}")
    return zero, _faults_at(st, addr, ps)


def data_gone(b: Backing, topology: str, options: Options | None = None) -> None:
    zero, faults = refault_after(b, topology, b.discard_advice, options)
    check.true(zero, f"page reads zeros after {b.punch_name} (the data is gone)")
    check.eq(faults, 2, "MISSING faults on the page (first write, access after the REMOVE)")


def content_kept(b: Backing, topology: str = "thread") -> None:
    """MADV_DONTNEED on shared memory: the content survives, re-access takes no fault."""
    zero, faults = refault_after(b, topology, abi.Madv.DONTNEED)
    check.false(zero, "page reads zeros after MADV_DONTNEED on shared memory")
    check.eq(faults, 1, "MISSING faults on the page (none on the access after DONTNEED)")


@pytest.mark.parametrize(
    "b,topology",
    matrix(PRIVATE, lambda b, t: f"MADV_DONTNEED data gone, zero-filled on refault on {b} ({t} handler)", TOPOLOGIES))
def test_dontneed_private(b: Backing, topology: str) -> None:
    data_gone(b, topology)


@pytest.mark.parametrize(
    "b,topology",
    matrix(SHARED, lambda b, t: f"MADV_REMOVE punched, zero-filled on refault on {b} ({t} handler)", TOPOLOGIES))
def test_madv_remove_shared(b: Backing, topology: str) -> None:
    data_gone(b, topology)


@pytest.mark.parametrize("b", matrix(SHARED, lambda b: f"MADV_DONTNEED keeps shared content, no fault on {b}"))
def test_dontneed_shared_keeps_content(b: Backing) -> None:
    content_kept(b)


@pytest.mark.parametrize(
    "b", matrix(BACKINGS, lambda b: f"zero handler serves the refault after {b.punch_name} with zeros on {b}"))
def test_zero_handler(b: Backing) -> None:
    """A handler that serves every fault with zeros (Options.zero) on the refault."""
    data_gone(b, "thread", Options(zero=True))


# ---------------------------------------------------------------------------------------


def unaligned_remove(b: Backing, options: Options | None = None) -> None:
    """MADV_REMOVE from the middle of the first huge page to the middle of the last."""
    b.require(EVENT_REMOVE)
    region = b.map(min(3, b.max_pages))
    n, hp = region.npages, region.page_size
    if n == 1:
        start, end = region.addr + hp // 4, region.addr + 3 * hp // 4
    else:
        start, end = region.addr + hp // 2, region.page(n - 1) + hp // 2
    src = make_source(region)
    opts = b.options(options)
    with served(region, "thread", EVENT_REMOVE | b.missing_feature, source=src, options=opts) as s:
        libc.fill(region.addr, MARK, region.size)
        libc.madvise(start, end - start, abi.Madv.REMOVE)
        with Pagemap() as pm:
            present = [e.present for e in pm.entries(region.addr, n, hp)]
        faults_before = len(s.stats().faults)
        head, tail = start - region.addr, region.end - end
        check.true(libc.is_uniform(region.addr, MARK, head), "bytes before the range keep their data")
        check.true(libc.is_uniform(end, MARK, tail), "bytes after the range keep their data")
        for i in range(n):
            lo, hi = max(start, region.page(i)), min(end, region.page(i) + hp)
            read_async(lo, 1).join()
            check_zero(lo, hi - lo, f"advised part of huge page {i}")
        flush(s.handler)
        st = s.stats()
    check_no_errors(st)
    check.eq(ranges_of(st.events), [(start, end)], "REMOVE range (the advised one, unaligned)")
    inside = [i for i in range(n) if region.page(i) >= start and region.page(i) + hp <= end]
    check.eq(present, [i not in inside for i in range(n)], "pagemap present after the REMOVE (partial pages kept)")
    check.eq(len(st.faults) - faults_before, len(inside),
             "MISSING faults on access (one per discarded page)" + fault_records(st))
    check.eq({i for i, v in st.states.items() if v == REMOVED}, set(),
             "pages still REMOVED in the handler after access")
    check.eq({i for i in inside if st.states.get(i) != ZERO}, set(), "discarded pages served with zeros")


@pytest.mark.parametrize("b", matrix(HUGETLBFS, lambda b: f"hugetlbfs MADV_REMOVE over an unaligned range on {b}"))
def test_hugetlbfs_unaligned_remove(b: Backing) -> None:
    unaligned_remove(b)
