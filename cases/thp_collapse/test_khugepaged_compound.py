"""khugepaged.c collapse cases on page tables that map (parts of) existing THPs.

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_single_pte_entry_compound,
collapse_full_of_compound, collapse_compound_extreme, madvise_collapse_existing_thps,
madvise_retracted_page_tables).  A PTE-mapped THP is made by splitting the PMD of a
collapsed one (MADV_DONTNEED of all but one page, or a VMA split by MADV_NOHUGEPAGE on its
first page); the collapse must rebuild a PMD-mapped THP with the contents kept.
"""

import pytest

from cases.thp_collapse import contexts, matrix, regions
from cases.thp_collapse.matrix import ANON, FILE, FILE_RW, PAGE_SIZE, SHMEM, Variant
from cases.thp_collapse.scratchfs import file_fs, scratch_fs
from lib.kernel import abi, libc

FIXTURES = (file_fs, scratch_fs)  # the file contexts' scratch filesystem (pytest fixtures)


@pytest.mark.parametrize("v", matrix.params("collapse_single_pte_entry_compound", mems=(ANON, FILE, FILE_RW)))
def test_collapse_single_pte_entry_compound(v: Variant) -> None:
    """One PTE left mapping a compound page (the rest zapped) collapses into a new THP.
    (Upstream skips tmpfs: MADV_DONTNEED does not evict shmem pages; not run on shmem.)"""
    matrix.require(v)
    area = contexts.alloc_hpage(v)
    libc.madvise(area.addr, v.size, abi.Madv.NOHUGEPAGE)
    libc.madvise(area.addr + PAGE_SIZE, v.size - PAGE_SIZE, abi.Madv.DONTNEED)
    regions.check_huge(area, 0, v.size, "Split huge page leaving single PTE mapping compound page")
    contexts.collapse(v, area, 1, True, "Collapse PTE table with single PTE mapping compound page")
    regions.validate(area.addr, 0, PAGE_SIZE)


@pytest.mark.parametrize("v", matrix.params("collapse_full_of_compound", mems=(ANON, FILE, FILE_RW, SHMEM)))
def test_collapse_full_of_compound(v: Variant) -> None:
    """A PTE table full of the subpages of one THP (PMD split by a VMA split and merge) is
    collapsed again."""
    matrix.require(v)
    area = contexts.alloc_hpage(v)
    libc.madvise(area.addr, PAGE_SIZE, abi.Madv.NOHUGEPAGE)
    libc.madvise(area.addr, v.size, abi.Madv.NOHUGEPAGE)
    regions.check_huge(area, 0, v.size, "Split huge page leaving single PTE page table full of compound pages")
    contexts.collapse(v, area, 1, True, "Collapse PTE table full of compound pages")
    regions.validate(area.addr, 0, v.size)


def build_compound_extreme(size: int) -> tuple[int, int]:
    """A PTE table whose nr entries each map a page of a *different* THP (khugepaged.c
    collapse_compound_extreme): nr rounds of 'make a THP at B, move its first page out and
    back below B'.  Returns (start of the built range, reservation to unmap)."""
    nr, order = size // PAGE_SIZE, matrix.order_of(size)
    resv = regions.reserve(6 * size)
    base, tmp = resv + 2 * size, resv + 4 * size
    libc.mmap(size, regions.PROT_RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED, addr=base)
    for i in range(nr):
        libc.madvise(base, size, abi.Madv.HUGEPAGE)
        libc.touch_write(base, 1)  # a THP at fault where enabled ...
        if regions.folio_orders(base, 1) != [order]:
            libc.madvise(base, size, abi.Madv.POPULATE_WRITE)  # ... else collapse one
            ret = contexts.madvise_collapse(base, size)
            if ret or regions.folio_orders(base, 1) != [order]:
                raise AssertionError(f"round {i}: failed to allocate a huge page at B (MADV_COLLAPSE {ret})")
        libc.madvise(base, size, abi.Madv.NOHUGEPAGE)
        libc.mremap(base - i * PAGE_SIZE, i * PAGE_SIZE + size, (i + 1) * PAGE_SIZE,
                    abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, tmp)
        libc.mremap(tmp, (i + 1) * PAGE_SIZE, (i + 1) * PAGE_SIZE + size, abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED,
                    base - (i + 1) * PAGE_SIZE)
    libc.munmap(base, size)
    return base - size, resv


@pytest.mark.deadline(matrix.KH_DEADLINE)  # nr THPs built one by one: about 2 minutes under TCG
@pytest.mark.parametrize("v", matrix.params("collapse_compound_extreme", madvise=(("enabled", "madvise"),)))
def test_collapse_compound_extreme(v: Variant) -> None:
    """A PTE table full of pages from nr different THPs collapses into one THP.  The THPs are
    built at fault (enabled=madvise in both contexts, as upstream builds them; MADV_COLLAPSE
    ignores the knob)."""
    matrix.require(v)
    start, resv = build_compound_extreme(v.size)
    area = regions.Area(start, v.size, ANON)
    regions.fault(area, 0, v.size)
    regions.check_huge(area, 0, v.size, "Construct PTE page table full of different PTE-mapped compound pages")
    contexts.collapse(v, area, 1, True, "Collapse PTE table full of different compound pages")
    regions.validate(area.addr, 0, v.size)
    libc.munmap(resv, 6 * v.size)


@pytest.mark.parametrize("v", matrix.params("madvise_collapse_existing_thps", ctxs=("madvise",),
                                         mems=(ANON, FILE, FILE_RW, SHMEM)))
def test_madvise_collapse_existing_thps(v: Variant) -> None:
    """MADV_COLLAPSE of a range that is already PMD-mapped succeeds and changes nothing."""
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, v.size)
    contexts.collapse(v, area, 1, True, "Collapse fully populated PTE table")
    regions.validate(area.addr, 0, v.size)
    contexts.collapse(v, area, 1, True, "Re-collapse PMD-mapped hugepage", sanity=False)
    regions.validate(area.addr, 0, v.size)


@pytest.mark.deadline(matrix.KH_DEADLINE)  # waits for khugepaged
@pytest.mark.parametrize("v", [pytest.param(x, id=x.name) for x in (
    Variant("madvise_retracted_page_tables", "madvise", m, settings_ctx="khugepaged") for m in (FILE, FILE_RW, SHMEM))])
def test_madvise_retracted_page_tables(v: Variant) -> None:
    """khugepaged collapses the page cache and retracts the page table (PMD cleared); then
    MADV_COLLAPSE installs the huge PMD from the page cache.  Runs with the khugepaged
    context's knobs throughout (upstream pushes enabled=never only around the MADV_COLLAPSE)."""
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, v.size)
    regions.check_huge(area, 0, v.size, "Collapse and leave PMD cleared: sanity")
    contexts.register_with_khugepaged()
    libc.madvise(area.addr, v.size, abi.Madv.HUGEPAGE)
    alias = libc.mmap(v.size, abi.PROT_READ, abi.MAP_SHARED, area.fd, 0)  # watches the page cache

    def page_cache_huge() -> bool:
        libc.touch_read(alias)
        return regions.folio_orders(alias, 1) == [matrix.order_of(v.size)]

    try:
        r = contexts.wait_for_scan(page_cache_huge)
    finally:
        libc.munmap(alias, v.size)
    libc.madvise(area.addr, v.size, abi.Madv.NOHUGEPAGE)
    if not r.collapsed:
        raise AssertionError(f"khugepaged did not collapse the page cache within {r.scans} full scans: "
                             f"nothing retracted to test")
    contexts.collapse(v, area, 1, True, "Install huge PMD from page cache")
    regions.validate(area.addr, 0, v.size)
