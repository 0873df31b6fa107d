"""khugepaged.c collapse cases across fork(): pages and THPs COW-shared with another process.

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_fork, collapse_fork_compound,
collapse_max_ptes_shared); Documentation/admin-guide/mm/transhuge.rst (max_ptes_shared: how
many pages shared across processes khugepaged accepts; MADV_COLLAPSE ignores it).  The
collapse happens in the child; the parent's mapping must stay as it was (small page, or its
PMD-mapped THP), and both keep their contents.
"""

import pytest

from cases.thp_collapse import collapse as C
from cases.thp_collapse.collapse import ANON, MADV, PS, Variant
from lib.kernel import libc


@pytest.mark.parametrize("v", C.variants("collapse_fork"))
def test_collapse_fork(v: Variant) -> None:
    """A PTE table with one page shared with the parent is collapsed in the child; the parent
    keeps its small page."""
    C.require(v)
    area = C.setup_area(ANON, v.size)
    C.fault(area, 0, PS)
    C.check_huge(area, 0, v.size, "Allocate small page")

    def in_child() -> None:
        C.check_huge(area, 0, v.size, "Share small page over fork(): child")
        C.fault(area, PS, 2 * PS)
        C.collapse(v, area, 1, True, "Collapse PTE table with single page shared with parent process")
        C.validate(area.addr, 0, PS)

    C.in_child(in_child)
    C.check_huge(area, 0, v.size, "Check if parent still has small page")
    C.validate(area.addr, 0, PS)


@pytest.mark.parametrize("v", C.variants("collapse_fork_compound",
                                         madvise=(("khugepaged/max_ptes_shared", C.NR - 1),),
                                         khugepaged=(("khugepaged/max_ptes_shared", C.NR - 1),)))
def test_collapse_fork_compound(v: Variant) -> None:
    """A THP shared with the parent, PMD split in the child and one page COWed there, is
    collapsed in the child (max_ptes_shared = nr-1, as upstream sets around this collapse);
    the parent keeps its PMD-mapped THP."""
    C.require(v)
    area = C.alloc_hpage(v)

    def in_child() -> None:
        C.check_huge(area, 1, v.size, "Share huge page over fork(): child")
        libc.madvise(area.addr, PS, MADV.NOHUGEPAGE)
        libc.madvise(area.addr, v.size, MADV.NOHUGEPAGE)
        C.check_huge(area, 0, v.size, "Split huge page PMD in child process")
        C.fault(area, 0, PS)
        C.collapse(v, area, 1, True, "Collapse PTE table full of compound pages in child")
        C.validate(area.addr, 0, v.size)

    C.in_child(in_child)
    C.check_huge(area, 1, v.size, "Check if parent still has huge page")
    C.validate(area.addr, 0, v.size)


@pytest.mark.parametrize("v", C.variants("collapse_max_ptes_shared"))
def test_collapse_max_ptes_shared(v: Variant) -> None:
    """With more than max_ptes_shared (nr/2) pages still shared with the parent khugepaged does
    not collapse (MADV_COLLAPSE does); one more COW brings it to the limit and it collapses."""
    C.require(v)
    max_shared = (C.NR // 2) * v.nr // C.NR
    area = C.alloc_hpage(v)

    def in_child() -> None:
        C.check_huge(area, 1, v.size, "Share huge page over fork(): child")
        C.fault(area, 0, (v.nr - max_shared - 1) * PS)
        C.check_huge(area, 0, v.size, f"Trigger CoW on page {v.nr - max_shared - 1} of {v.nr}")
        C.collapse(v, area, 1, not v.khugepaged, "Maybe collapse with max_ptes_shared exceeded")
        if v.khugepaged:
            C.fault(area, 0, (v.nr - max_shared) * PS)
            C.check_huge(area, 0, v.size, f"Trigger CoW on page {v.nr - max_shared} of {v.nr}")
            C.collapse(v, area, 1, True, "Collapse with max_ptes_shared PTEs shared")
        C.validate(area.addr, 0, v.size)

    C.in_child(in_child)
    C.check_huge(area, 1, v.size, "Check if parent still has huge page")
    C.validate(area.addr, 0, v.size)
