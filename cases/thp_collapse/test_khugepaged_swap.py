"""khugepaged.c collapse cases with swapped-out PTEs (collapse swaps them back in).

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_swapin_single_pte,
collapse_max_ptes_swap); Documentation/admin-guide/mm/transhuge.rst (max_ptes_swap: how many
swapped-out pages khugepaged swaps in for a collapse; MADV_COLLAPSE ignores it).  Needs swap:
a temporary zram swap device (lib.kernel.swap, through the suite's swap_setup fixture) is set up
for the run when none is active, and removed at its end; without one the cases SKIP ("no swap").
"""

import pytest

from cases.thp_collapse import contexts, matrix, regions
from cases.thp_collapse.matrix import ANON, PAGE_SIZE, Variant
from lib.kernel import abi, libc, system


@pytest.fixture
def swap(swap_setup) -> str:
    """Why there is no swap ('' when there is): the suite's ``swap_setup`` fixture
    (lib/runner/fixtures.py) sets up a temporary zram device for the run when none is active."""
    return swap_setup.note


def require_swap(swap: str) -> None:
    if not system.swap_active():
        pytest.skip("no swap" + (f" ({swap})" if swap else ""))


def pageout(area: regions.Area, npages: int) -> None:
    """MADV_PAGEOUT the first ``npages``; smaps Swap must then show exactly them (check_swap)."""
    libc.madvise(area.addr, npages * PAGE_SIZE, abi.Madv.PAGEOUT)
    kb = regions.smaps_sum(area.addr, area.size, "Swap")
    if kb != npages * PAGE_SIZE // 1024:
        raise AssertionError(f"Swapout {npages} of {area.size // PAGE_SIZE} pages: smaps Swap {kb} kB, "
                             f"expected {npages * PAGE_SIZE // 1024} kB")


@pytest.mark.parametrize("v", matrix.params("collapse_swapin_single_pte"))
def test_collapse_swapin_single_pte(v: Variant, swap) -> None:
    """One swapped-out PTE is swapped in by the collapse."""
    matrix.require(v)
    require_swap(swap)
    area = regions.setup_area(ANON, v.size)
    regions.fault(area, 0, v.size)
    pageout(area, 1)
    contexts.collapse(v, area, 1, True, "Collapse with swapping in single PTE entry")
    regions.validate(area.addr, 0, v.size)


@pytest.mark.parametrize("v", matrix.params("collapse_max_ptes_swap"))
def test_collapse_max_ptes_swap(v: Variant, swap) -> None:
    """max_ptes_swap+1 swapped-out PTEs: khugepaged refuses, MADV_COLLAPSE collapses;
    exactly max_ptes_swap: khugepaged collapses."""
    matrix.require(v)
    require_swap(swap)
    max_swap = contexts.kh_counter("max_ptes_swap") * v.nr // matrix.PMD_PAGES
    area = regions.setup_area(ANON, v.size)
    regions.fault(area, 0, v.size)
    pageout(area, max_swap + 1)
    contexts.collapse(v, area, 1, not v.khugepaged, "Maybe collapse with max_ptes_swap exceeded")
    regions.validate(area.addr, 0, v.size)
    if v.khugepaged:
        regions.fault(area, 0, v.size)
        pageout(area, max_swap)
        contexts.collapse(v, area, 1, True, "Collapse with max_ptes_swap pages swapped out")
        regions.validate(area.addr, 0, v.size)
