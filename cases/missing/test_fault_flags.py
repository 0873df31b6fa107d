"""What a MISSING fault message says (Documentation/admin-guide/mm/userfaultfd.rst,
include/uapi/linux/userfaultfd.h).

* A read fault arrives without UFFD_PAGEFAULT_FLAG_WRITE, a write fault with it.
* pthread_mutex_lock on a missing page faults as a *read*: glibc NPTL reads the mutex type
  (``__data.__type``) before its atomic write.  uffd-unit-tests relies on this in its generic
  handler ("unexpected write fault"); Peter Xu's comment in that handler explains it and warns
  that another pthread implementation may differ, so the failure message names the glibc.
* UFFD_FEATURE_THREAD_ID: ``pagefault.feat.ptid`` is the faulting thread's id (0 without it).
* UFFD_FEATURE_EXACT_ADDRESS: the address keeps its low bits; without it the address is
  aligned down (to the base page, or to the huge page on hugetlb: hugetlb_handle_userfault
  passes the huge-page-aligned address).
"""

from __future__ import annotations

import pytest

from cases.missing import support
from lib import check
from lib.check import note
from lib.kernel import abi, libc
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import Msg, Userfaultfd, open_for

MEMS = mem_types()
OFFSET = 0x123  # an unaligned offset into the page


def ids(name: str, mems: list[MemType] = MEMS) -> list[str]:
    return [f"{name} on {m}" for m in mems]


def fault_once(u: Userfaultfd, a: support.Area, access, resolve: bool = True) -> tuple[Msg, int]:
    """Run ``access`` on a thread, read its one fault message, serve it; (message, thread id)."""
    t = Toucher.call(access, "access")
    try:
        m = u.read_msg(10)
        if resolve:
            support.copy_page(u, m.address & ~(a.page_size - 1), a.src.addr, a.page_size)
    finally:
        if not t.wait(10 if resolve else 0):
            try:
                u.unregister(a.dst.addr, a.size)  # wakes the thread before the area goes away
            except OSError:
                pass
        t.wait(10)
    check.true(t.done(), "the faulting thread finished after the page was served")
    return m, t.tid


def check_rw_flag(m: Msg, write: bool) -> None:
    check.eq(m.event, abi.Event.PAGEFAULT, "message event")
    check.eq(bool(m.flags & abi.PagefaultFlag.WRITE), write, f"WRITE flag of a {'write' if write else 'read'} fault")
    check.mask_lacks(m.flags, abi.PagefaultFlag.WP | abi.PagefaultFlag.MINOR, "WP/MINOR flags of a MISSING fault")


@pytest.mark.parametrize("mt", MEMS, ids=ids("read fault flags"))
def test_read_flags(mt: MemType) -> None:
    support.need_type(mt, npages=1)
    with support.make_area(mt, 1) as a, open_for(mt.missing_feature) as u:
        u.register(a.dst.addr, a.page_size)
        m, _ = fault_once(u, a, lambda: libc.read(a.dst.addr + OFFSET, 8))
        check_rw_flag(m, write=False)


@pytest.mark.parametrize("mt", MEMS, ids=ids("write fault flags"))
def test_write_flags(mt: MemType) -> None:
    support.need_type(mt, npages=1)
    with support.make_area(mt, 1) as a, open_for(mt.missing_feature) as u:
        u.register(a.dst.addr, a.page_size)
        m, _ = fault_once(u, a, lambda: libc.write(a.dst.addr + OFFSET, b"w" * 8))
        check_rw_flag(m, write=True)
        check.eq(libc.read(a.dst.addr + OFFSET, 8), b"w" * 8, "the write landed on the served page")


def check_mutex_fault(m: Msg, glibc: str) -> None:
    if m.flags & abi.PagefaultFlag.WRITE:
        raise AssertionError(
            f"pthread_mutex_lock faulted with UFFD_PAGEFAULT_FLAG_WRITE (glibc {glibc}): this pthread "
            "implementation writes the mutex before reading its type; uffd-unit-tests' handler "
            "would report 'unexpected write fault'")


@pytest.mark.parametrize("mt", MEMS, ids=ids("pthread_mutex_lock fault flags"))
def test_mutex_lock_flags(mt: MemType) -> None:
    support.need_type(mt, npages=1)
    glibc = libc.glibc_version()
    note(f"glibc {glibc}")
    with support.make_area(mt, 1) as a, open_for(mt.missing_feature) as u:
        u.register(a.dst.addr, a.page_size)

        def lock() -> None:
            libc.mutex_lock(a.dst.addr)
            libc.mutex_unlock(a.dst.addr)

        m, _ = fault_once(u, a, lock)
        check.eq(m.address & ~(a.page_size - 1), a.dst.addr, "fault address")
        check_mutex_fault(m, glibc)


THREAD_MEMS = [m for m in MEMS if m.kind in ("anon", "hugetlb") and m.page_size in (libc.PAGE_SIZE, 2 << 20)]


@pytest.mark.parametrize("mt,with_feature", [(m, w) for m in THREAD_MEMS for w in (True, False)],
                         ids=[f"{'' if w else 'no '}thread-id on {m}" for m in THREAD_MEMS for w in (True, False)])
def test_thread_id(mt: MemType, with_feature: bool) -> None:
    feat = abi.Feature.THREAD_ID if with_feature else 0
    support.need_type(mt, feat, npages=1)
    with support.make_area(mt, 1) as a, open_for(mt.missing_feature | feat) as u:
        u.register(a.dst.addr, a.page_size)
        m, tid = fault_once(u, a, lambda: libc.read(a.dst.addr, 8))
        check.eq(m.ptid, tid if with_feature else 0, "pagefault.feat.ptid")


@pytest.mark.parametrize("mt,with_feature", [(m, w) for m in THREAD_MEMS for w in (True, False)],
                         ids=[f"{'exact-address' if w else 'aligned-address'} on {m}"
                              for m in THREAD_MEMS for w in (True, False)])
def test_exact_address(mt: MemType, with_feature: bool) -> None:
    feat = abi.Feature.EXACT_ADDRESS if with_feature else 0
    support.need_type(mt, feat, npages=1)
    with support.make_area(mt, 1) as a, open_for(mt.missing_feature | feat) as u:
        u.register(a.dst.addr, a.page_size)
        target = a.dst.addr + a.page_size // 2 + OFFSET
        m, _ = fault_once(u, a, lambda: libc.read(target, 1))
        want = target if with_feature else target & ~(a.page_size - 1)
        check.eq(hex(m.address), hex(want), "pagefault.address")
