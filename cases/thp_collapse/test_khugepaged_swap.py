"""khugepaged.c collapse cases with swapped-out PTEs (collapse swaps them back in).

Upstream: tools/testing/selftests/mm/khugepaged.c (collapse_swapin_single_pte,
collapse_max_ptes_swap); Documentation/admin-guide/mm/transhuge.rst (max_ptes_swap: how many
swapped-out pages khugepaged swaps in for a collapse; MADV_COLLAPSE ignores it).  Needs swap:
a temporary zram swap device (lib.kernel.swap) is set up for this module when none is active, and
removed after it; without one the cases SKIP ("no swap").
"""

import pytest

from cases.thp_collapse import collapse as C
from cases.thp_collapse.collapse import ANON, MADV, PS, Variant
from lib.kernel import libc, system


@pytest.fixture(scope="module")
def swap(request):
    """A swap device for the module (pytest process): the active one, or a temporary zram."""
    if system.swap_active():
        yield "active"
        return
    if request.config.getoption("--kmm-no-swap-setup", default=False):
        yield None
        return
    try:
        from lib.kernel import swap as swapmod
    except ImportError:
        yield None
        return
    try:
        t = swapmod.create()
    except swapmod.SwapError as e:
        yield f"none: {e}"
        return
    try:
        yield t.describe()
    finally:
        swapmod.remove(t)


def require_swap(swap) -> None:
    if not system.swap_active():
        pytest.skip("no swap" + (f" ({swap.removeprefix('none: ')})" if isinstance(swap, str) else ""))


def pageout(area: C.Area, npages: int) -> None:
    """MADV_PAGEOUT the first ``npages``; smaps Swap must then show exactly them (check_swap)."""
    libc.madvise(area.addr, npages * PS, MADV.PAGEOUT)
    kb = C.smaps_sum(area.addr, area.size, "Swap")
    if kb != npages * PS // 1024:
        raise AssertionError(f"Swapout {npages} of {area.size // PS} pages: smaps Swap {kb} kB, "
                             f"expected {npages * PS // 1024} kB")


@pytest.mark.parametrize("v", C.variants("collapse_swapin_single_pte"))
def test_collapse_swapin_single_pte(v: Variant, swap) -> None:
    """One swapped-out PTE is swapped in by the collapse."""
    C.require(v)
    require_swap(swap)
    area = C.setup_area(ANON, v.size)
    C.fault(area, 0, v.size)
    pageout(area, 1)
    C.collapse(v, area, 1, True, "Collapse with swapping in single PTE entry")
    C.validate(area.addr, 0, v.size)


@pytest.mark.parametrize("v", C.variants("collapse_max_ptes_swap"))
def test_collapse_max_ptes_swap(v: Variant, swap) -> None:
    """max_ptes_swap+1 swapped-out PTEs: khugepaged refuses, MADV_COLLAPSE collapses;
    exactly max_ptes_swap: khugepaged collapses."""
    C.require(v)
    require_swap(swap)
    max_swap = C.kh_counter("max_ptes_swap") * v.nr // C.NR
    area = C.setup_area(ANON, v.size)
    C.fault(area, 0, v.size)
    pageout(area, max_swap + 1)
    C.collapse(v, area, 1, not v.khugepaged, "Maybe collapse with max_ptes_swap exceeded")
    C.validate(area.addr, 0, v.size)
    if v.khugepaged:
        C.fault(area, 0, v.size)
        pageout(area, max_swap)
        C.collapse(v, area, 1, True, "Collapse with max_ptes_swap pages swapped out")
        C.validate(area.addr, 0, v.size)
