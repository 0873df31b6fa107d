"""khugepaged.c collapse cases on fully/partly populated page tables, both contexts.

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_full, collapse_empty,
collapse_single_pte_entry, collapse_max_ptes_none, alloc_at_fault); semantics:
Documentation/admin-guide/mm/transhuge.rst ("khugepaged will be automatically started ...",
max_ptes_none; MADV_COLLAPSE ignores the max_ptes_* limits).  Names are the upstream function
names with ``(<context>:<memory>)`` as khugepaged.c's command line spells them; anon cases in
the khugepaged context run on every THP size (mTHP sizes skip unless the kernel has
khugepaged mTHP collapse: cases/thp_collapse/probes.py).
"""

import pytest

from cases.thp_collapse import contexts, matrix, regions
from cases.thp_collapse.matrix import ANON, FILE, FILE_RW, PAGE_SIZE, SHMEM, Variant
from cases.thp_collapse.scratchfs import file_fs, scratch_fs
from lib.kernel import abi, libc

ALL_MEMS = (ANON, FILE, FILE_RW, SHMEM)

FIXTURES = (file_fs, scratch_fs)  # the file contexts' scratch filesystem (pytest fixtures)


@pytest.mark.parametrize("v", matrix.params("collapse_full", mems=ALL_MEMS))
def test_collapse_full(v: Variant) -> None:
    """Four fully populated PTE tables collapse into four huge pages; contents kept."""
    matrix.require(v)
    n = 4
    area = regions.setup_area(v.mem, n * v.size)
    regions.fault(area, 0, area.size)
    contexts.collapse(v, area, n, True, "Collapse multiple fully populated PTE table")
    regions.validate(area.addr, 0, area.size)


@pytest.mark.parametrize("v", matrix.params("collapse_empty"))
def test_collapse_empty(v: Variant) -> None:
    """An empty PTE table is not collapsed (MADV_COLLAPSE fails, khugepaged leaves it)."""
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    contexts.collapse(v, area, 1, False, "Do not collapse empty PTE table")


@pytest.mark.parametrize("v", matrix.params("collapse_single_pte_entry", mems=ALL_MEMS))
def test_collapse_single_pte_entry(v: Variant) -> None:
    """One present PTE is enough (max_ptes_none = nr-1; MADV_COLLAPSE ignores the limit)."""
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, PAGE_SIZE)
    contexts.collapse(v, area, 1, True, "Collapse PTE table with single PTE entry present")
    regions.validate(area.addr, 0, PAGE_SIZE)


HALF_NONE = (("khugepaged/max_ptes_none", matrix.PMD_PAGES // 2),)


@pytest.mark.parametrize("v", matrix.params("collapse_max_ptes_none", mems=(ANON, FILE, FILE_RW),
                                         madvise=HALF_NONE, khugepaged=HALF_NONE))
def test_collapse_max_ptes_none(v: Variant) -> None:
    """With max_ptes_none = nr/2 and one PTE too few present, khugepaged does not collapse and
    MADV_COLLAPSE does; with exactly nr - max_ptes_none present khugepaged collapses.
    (Upstream skips this on tmpfs, whose pages are always in the page cache; not run on shmem.)"""
    matrix.require(v)
    # scaled to the collapse size (linux-mm mTHP context)
    max_none = (matrix.PMD_PAGES // 2) * v.nr // matrix.PMD_PAGES
    area = regions.setup_area(v.mem, v.size)
    few = (v.nr - max_none - 1) * PAGE_SIZE
    regions.fault(area, 0, few)
    contexts.collapse(v, area, 1, not v.khugepaged, "Maybe collapse with max_ptes_none exceeded")
    regions.validate(area.addr, 0, few)
    if v.khugepaged:
        enough = (v.nr - max_none) * PAGE_SIZE
        regions.fault(area, 0, enough)
        contexts.collapse(v, area, 1, True, "Collapse with max_ptes_none PTEs empty")
        regions.validate(area.addr, 0, enough)


@pytest.mark.tap("alloc_at_fault")
@pytest.mark.parametrize("v", [Variant("alloc_at_fault", "khugepaged", extra=(("enabled", "always"),))])
def test_alloc_at_fault(v: Variant) -> None:
    """khugepaged.c's first check: with enabled=always one touch allocates a PMD THP, and
    MADV_DONTNEED of its first page splits the PMD (AnonHugePages back to 0)."""
    matrix.require(v)
    area = regions.setup_area(ANON, v.size)
    libc.touch_write(area.addr, 1)
    regions.check_huge(area, 1, v.size, "Allocate huge page on fault")
    # khugepaged scans every 10 ms in this context and would collapse the split PMD right
    # back (max_ptes_none allows the hole): VM_NOHUGEPAGE keeps it off this VMA without
    # changing what MADV_DONTNEED does to the PMD
    libc.madvise(area.addr, v.size, abi.Madv.NOHUGEPAGE)
    libc.madvise(area.addr, PAGE_SIZE, abi.Madv.DONTNEED)
    regions.check_huge(area, 0, v.size, "Split huge PMD on MADV_DONTNEED")
