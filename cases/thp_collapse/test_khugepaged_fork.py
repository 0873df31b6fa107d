"""khugepaged.c collapse cases across fork(): pages and THPs COW-shared with another process.

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_fork, collapse_fork_compound,
collapse_max_ptes_shared); Documentation/admin-guide/mm/transhuge.rst (max_ptes_shared: how
many pages shared across processes khugepaged accepts; MADV_COLLAPSE ignores it).  The
collapse happens in the child; the parent's mapping must stay as it was (small page, or its
PMD-mapped THP), and both keep their contents.
"""

import pytest

from cases.thp_collapse import contexts, matrix, regions
from cases.thp_collapse.matrix import ANON, PAGE_SIZE, Variant
from lib.kernel import abi, libc


@pytest.mark.parametrize("v", matrix.params("collapse_fork"))
def test_collapse_fork(v: Variant) -> None:
    """A PTE table with one page shared with the parent is collapsed in the child; the parent
    keeps its small page."""
    matrix.require(v)
    area = regions.setup_area(ANON, v.size)
    regions.fault(area, 0, PAGE_SIZE)
    regions.check_huge(area, 0, v.size, "Allocate small page")

    def in_child() -> None:
        regions.check_huge(area, 0, v.size, "Share small page over fork(): child")
        regions.fault(area, PAGE_SIZE, 2 * PAGE_SIZE)
        contexts.collapse(v, area, 1, True, "Collapse PTE table with single page shared with parent process")
        regions.validate(area.addr, 0, PAGE_SIZE)

    contexts.in_child(in_child)
    regions.check_huge(area, 0, v.size, "Check if parent still has small page")
    regions.validate(area.addr, 0, PAGE_SIZE)


@pytest.mark.parametrize("v", matrix.params("collapse_fork_compound",
                                         madvise=(("khugepaged/max_ptes_shared", matrix.PMD_PAGES - 1),),
                                         khugepaged=(("khugepaged/max_ptes_shared", matrix.PMD_PAGES - 1),)))
def test_collapse_fork_compound(v: Variant) -> None:
    """A THP shared with the parent, PMD split in the child and one page COWed there, is
    collapsed in the child (max_ptes_shared = nr-1, as upstream sets around this collapse);
    the parent keeps its PMD-mapped THP."""
    matrix.require(v)
    area = contexts.alloc_hpage(v)

    def in_child() -> None:
        regions.check_huge(area, 1, v.size, "Share huge page over fork(): child")
        libc.madvise(area.addr, PAGE_SIZE, abi.Madv.NOHUGEPAGE)
        libc.madvise(area.addr, v.size, abi.Madv.NOHUGEPAGE)
        regions.check_huge(area, 0, v.size, "Split huge page PMD in child process")
        regions.fault(area, 0, PAGE_SIZE)
        contexts.collapse(v, area, 1, True, "Collapse PTE table full of compound pages in child")
        regions.validate(area.addr, 0, v.size)

    contexts.in_child(in_child)
    regions.check_huge(area, 1, v.size, "Check if parent still has huge page")
    regions.validate(area.addr, 0, v.size)


@pytest.mark.parametrize("v", matrix.params("collapse_max_ptes_shared"))
def test_collapse_max_ptes_shared(v: Variant) -> None:
    """With more than max_ptes_shared (nr/2) pages still shared with the parent khugepaged does
    not collapse (MADV_COLLAPSE does); one more COW brings it to the limit and it collapses."""
    matrix.require(v)
    max_shared = (matrix.PMD_PAGES // 2) * v.nr // matrix.PMD_PAGES
    area = contexts.alloc_hpage(v)

    def in_child() -> None:
        regions.check_huge(area, 1, v.size, "Share huge page over fork(): child")
        regions.fault(area, 0, (v.nr - max_shared - 1) * PAGE_SIZE)
        regions.check_huge(area, 0, v.size, f"Trigger CoW on page {v.nr - max_shared - 1} of {v.nr}")
        contexts.collapse(v, area, 1, not v.khugepaged, "Maybe collapse with max_ptes_shared exceeded")
        if v.khugepaged:
            regions.fault(area, 0, (v.nr - max_shared) * PAGE_SIZE)
            regions.check_huge(area, 0, v.size, f"Trigger CoW on page {v.nr - max_shared} of {v.nr}")
            contexts.collapse(v, area, 1, True, "Collapse with max_ptes_shared PTEs shared")
        regions.validate(area.addr, 0, v.size)

    contexts.in_child(in_child)
    regions.check_huge(area, 1, v.size, "Check if parent still has huge page")
    regions.validate(area.addr, 0, v.size)
