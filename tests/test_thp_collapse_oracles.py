"""Negative controls for the THP-collapse area's oracles (docs/ARCHITECTURE.md rule 3): each oracle is fed a
state that must make it fail, and (where cheap) one that must make it pass.

Needs root (PFNs, /proc/kpageflags) and THP; changes no sysfs value.
"""

from __future__ import annotations

import os
import struct

import pytest

from cases.thp_collapse import contexts, matrix, oracles, regions, test_collapse_uffd, test_cow_collapse
from cases.thp_collapse import test_collapse_contents as contents
from lib.kernel import abi, libc, system
from lib.kernel.pagemap import Pagemap, folio_order
from lib.runner import isolation

pytestmark = [
    pytest.mark.skipif(not system.is_root(), reason="needs root (PFNs, kpageflags)"),
    pytest.mark.skipif(not system.pmd_size(), reason="no THP"),
]
PAGE_SIZE, PMD_SIZE = matrix.PAGE_SIZE, matrix.PMD_SIZE


def isolated(fn, timeout: float = 30.0) -> isolation.Outcome:
    return isolation.run_isolated(fn, timeout, skip_types=(pytest.skip.Exception,))


def collapsed_anon() -> regions.Area:
    """A PMD-mapped anon THP built with MADV_COLLAPSE, filled with the khugepaged pattern."""
    a = regions.setup_area(matrix.ANON, PMD_SIZE)
    regions.fault(a, 0, PMD_SIZE)
    assert contexts.madvise_collapse(a.addr, PMD_SIZE) == 0
    return a


# -- contents -------------------------------------------------------------------------------
def test_validate_catches_a_corrupted_page():
    a = regions.setup_area(matrix.ANON, PMD_SIZE)
    regions.fault(a, 0, PMD_SIZE)
    regions.validate(a.addr, 0, PMD_SIZE)  # positive
    libc.write(a.page(7), struct.pack("<I", 0x1234))
    with pytest.raises(AssertionError, match="page 7 is corrupted"):
        regions.validate(a.addr, 0, PMD_SIZE)
    a.close()


def test_check_filled_catches_a_dirty_hole_a_lost_marker_and_an_absent_page():
    n = 16
    a = regions.setup_area(matrix.ANON, n * PAGE_SIZE)
    populated = contents.populate_sparse(a.addr, n)
    with pytest.raises(AssertionError, match="not present"):
        contents.check_filled(a.addr, n, populated)  # holes never faulted
    libc.madvise(a.addr, n * PAGE_SIZE, abi.Madv.POPULATE_WRITE)
    contents.check_filled(a.addr, n, populated)  # positive: holes now present and zero
    libc.write(a.page(1) + 100, b"\x01")
    with pytest.raises(AssertionError, match="hole 1 not zero-filled"):
        contents.check_filled(a.addr, n, populated)
    libc.write(a.page(1) + 100, b"\x00")
    libc.write(a.page(3), b"\xff")
    with pytest.raises(AssertionError, match="populated page 3 changed"):
        contents.check_filled(a.addr, n, populated)
    a.close()


def test_check_presence_catches_an_extra_page():
    n = 8
    a = regions.setup_area(matrix.ANON, n * PAGE_SIZE)
    populated = contents.populate_sparse(a.addr, n)
    contents.check_presence(a.addr, n, populated, "positive")
    libc.touch_write(a.page(1), 0)
    with pytest.raises(AssertionError, match="present pages"):
        contents.check_presence(a.addr, n, populated, "negative")
    a.close()


# -- huge / PTE-mapped / PMD-mapped ---------------------------------------------------------
def test_check_huge_fails_on_base_pages_and_on_a_pte_mapped_thp():
    a = regions.setup_area(matrix.ANON, PMD_SIZE)
    libc.madvise(a.addr, PMD_SIZE, abi.Madv.NOHUGEPAGE)
    regions.fault(a, 0, PMD_SIZE)
    with pytest.raises(AssertionError, match="expected 1 of 1"):
        regions.check_huge(a, 1, PMD_SIZE, "base pages")
    a.close()
    t = collapsed_anon()
    regions.check_huge(t, 1, PMD_SIZE, "positive")
    assert regions.pmd_mapped_thp(t.addr, PMD_SIZE) and not regions.pte_mapped_thp(t.addr, PMD_SIZE)
    libc.mprotect(t.addr + PAGE_SIZE, PAGE_SIZE, abi.PROT_READ)  # split the PMD mapping, keep the folio
    libc.mprotect(t.addr + PAGE_SIZE, PAGE_SIZE, regions.PROT_RW)
    assert regions.pte_mapped_thp(t.addr, PMD_SIZE) and not regions.pmd_mapped_thp(t.addr, PMD_SIZE)
    with pytest.raises(AssertionError, match="expected 1 of 1"):
        regions.check_huge(t, 1, PMD_SIZE, "PTE-mapped THP")
    t.close()


def test_folio_orders_agrees_with_lib_folio_order():
    t = collapsed_anon()
    with Pagemap() as pm:
        pfns = [e.pfn for e in pm.entries(t.addr, matrix.PMD_PAGES)]
    fast = regions.folio_orders(t.addr, matrix.PMD_PAGES)
    assert fast[0] == fast[-1] == folio_order(pfns[0]) == folio_order(pfns[-1]) == matrix.order_of(PMD_SIZE)
    t.close()
    b = regions.setup_area(matrix.ANON, 4 * PAGE_SIZE)
    libc.madvise(b.addr, 4 * PAGE_SIZE, abi.Madv.NOHUGEPAGE)  # base pages whatever mTHP sizes another run enabled
    libc.madvise(b.addr, 4 * PAGE_SIZE, abi.Madv.POPULATE_WRITE)
    assert regions.folio_orders(b.addr, 4) == [0, 0, 0, 0]
    b.close()


# -- COW leak ---------------------------------------------------------------------------------
def test_leak_check_reports_a_leak_on_shared_memory():
    """MAP_SHARED anon: the parent's write is the child's write; the oracle must say so."""
    size = 16 * PAGE_SIZE
    addr = libc.mmap(size, regions.PROT_RW, abi.MAP_SHARED | abi.MAP_ANONYMOUS)
    libc.fill(addr, 1, size)
    with pytest.raises(AssertionError, match="Leak from parent into child"):
        test_cow_collapse.leak_check(addr, size, (0, size), lambda: None)
    priv = libc.mmap(size, regions.PROT_RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    libc.fill(priv, 1, size)
    test_cow_collapse.leak_check(priv, size, (0, size), lambda: None)  # positive
    libc.munmap(addr, size)
    libc.munmap(priv, size)


# -- uffd oracles -----------------------------------------------------------------------------
def _wp_negative() -> None:
    n = 8
    a = regions.setup_area(matrix.ANON, n * PAGE_SIZE)
    regions.fault(a, 0, n * PAGE_SIZE)
    with test_collapse_uffd.registered(a, test_collapse_uffd.MODE.WP) as (u, toucher):
        u.writeprotect(a.addr, n * PAGE_SIZE, True)
        u.writeprotect(a.page(5), PAGE_SIZE, False)  # a protection "lost" by a bad collapse
        try:
            oracles.wp_kept(u, a.addr, n, [True] * n, toucher)
        except AssertionError as e:
            assert "bit 57 lost on 1 protected page(s), first [5]" in str(e), e
        else:
            raise AssertionError("wp_kept accepted a page that lost its protection")
        u.writeprotect(a.addr, n * PAGE_SIZE, True)
        oracles.wp_kept(u, a.addr, n, [True] * n, toucher)  # positive; unprotects as it goes
        try:
            oracles.wp_kept(u, a.addr, n, [i == 0 for i in range(n)], toucher)
        except AssertionError as e:
            assert "bit 57 lost" in str(e), e
        else:
            raise AssertionError("wp_kept accepted an unprotected page as protected")


def test_wp_kept_catches_a_lost_protection():
    o = isolated(_wp_negative)
    assert o.kind == "pass", o.message + o.details


def _missing_negative() -> None:
    n = 8
    a = regions.setup_area(matrix.ANON, n * PAGE_SIZE)
    regions.fault(a, 0, PAGE_SIZE)  # page 0 populated, 1..7 holes
    with test_collapse_uffd.registered(a, test_collapse_uffd.MODE.MISSING) as (u, toucher):
        test_collapse_uffd.missing_kept(u, a, [1, 2], toucher)  # positive: both fault, served with zeros
        # page 1 is now populated (served): claiming it is a hole must fail
        try:
            test_collapse_uffd.missing_kept(u, a, [1, 4], toucher)
        except AssertionError as e:
            assert "hole(s) of the MISSING-registered range got populated, first [1]" in str(e), e
        else:
            raise AssertionError("missing_kept accepted a populated hole")


def test_missing_kept_catches_a_filled_hole():
    o = isolated(_missing_negative)
    assert o.kind == "pass", o.message + o.details


def test_in_page_cache_sees_shmem_holes():
    fd = os.memfd_create("kmm-t", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8 * PAGE_SIZE)
    os.pwrite(fd, b"x", 2 * PAGE_SIZE)
    os.pwrite(fd, b"y", 5 * PAGE_SIZE)
    assert test_collapse_uffd.in_page_cache(fd, 8) == {2, 5}
    os.close(fd)
