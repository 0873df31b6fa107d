"""minor, minor-wp and minor-collapse, as uffd-unit-tests (UFFDIO_REGISTER_MODE_MINOR).

The MAP_SHARED alias of the area is registered MINOR (MINOR|WP for minor-wp).  Each page is
first filled through the unregistered mapping with the byte ``p % 255`` (no fault: that mapping
is not registered).  Reading the alias then takes one MINOR fault per page (the page is in the
page cache but not mapped there); the handler bit-inverts the page through the unregistered
mapping and resolves with UFFDIO_CONTINUE (CONTINUE_MODE_WP for minor-wp), and a repeated
CONTINUE fails with -EEXIST.  Every byte read must be ``~(p % 255)``; the handler counts no
missing fault and exactly one minor fault per page.  minor-wp also checks that pagemap shows
the uffd-wp bit on every page CONTINUE installed protected.  minor-collapse (shmem): after the
minor pass MADV_COLLAPSE on the alias must leave it PMD-mapped (smaps ShmemPmdMapped covers it;
upstream checks this on its area) with the same content; a failing MADV_COLLAPSE is a skip, as
upstream.
"""

from __future__ import annotations

import pytest

from lib import abi, check, libc, system
from lib import missing_uut as uut
from lib.backing import MemType, mem_types
from lib.pagemap import Pagemap, smaps_kb
from lib.uffd import open_for

MEMS = [m for m in mem_types(("shmem", "hugetlb"))]
MINOR_FEATURES = abi.Feature.MINOR_HUGETLBFS | abi.Feature.MINOR_SHMEM
MINOR_WP_FEATURES = MINOR_FEATURES | abi.Feature.PAGEFAULT_FLAG_WP | abi.Feature.WP_UNPOPULATED


def expected_byte(p: int) -> int:
    return ~(p % 255) & 0xFF


def run_minor(mt: MemType, wp: bool, collapse: bool = False, npages: int | None = None,
              handler_factory=uut.default_handler) -> None:
    feats = MINOR_WP_FEATURES if wp else MINOR_FEATURES
    align = system.pmd_size() if collapse else 0
    with uut.make_area(mt, npages, counters=False, align=align, alias=False) as a, open_for(feats) as u:
        a.dst_alias = alias = uut.alias_of(a.dst, align)
        ps = a.page_size
        mode = abi.RegisterMode.MINOR | (abi.RegisterMode.WP if wp else 0)
        u.register(alias.addr, a.size, mode)
        for p in range(a.npages):
            libc.fill(a.page(p), p % 255, ps)
        stats = uut.FaultStats()
        with uut.PollThread(u, handler_factory(a, u, stats, wp, alias), (alias.addr, a.size), stats) as pt:
            bad = [p for p in range(a.npages) if not uut.filled(alias.addr + p * ps, expected_byte(p), ps)]
            pt.stop()
        check.eq(stats.errors, [], "handler errors")
        check.eq(bad, [], "alias pages with unexpected content")
        check.eq((stats.missing, stats.minor), (0, a.npages), "missing and minor faults")
        if wp:
            with Pagemap() as pm:
                unprotected = [p for p, e in enumerate(pm.entries(alias.addr, a.npages, ps)) if not e.uffd_wp]
            check.eq(unprotected, [], "alias pages without the uffd-wp bit after CONTINUE_MODE_WP")
        if collapse:
            try:
                libc.madvise(alias.addr, a.size, abi.Madv.COLLAPSE)
            except OSError as e:
                pytest.skip(f"MADV_COLLAPSE failed: {e.strerror}")
            check.eq(smaps_kb(alias.addr, "ShmemPmdMapped"), a.size // 1024, "ShmemPmdMapped of the alias (kB)")
            bad = [p for p in range(a.npages) if not uut.filled(alias.addr + p * ps, expected_byte(p), ps)]
            check.eq(bad, [], "alias pages with unexpected content after MADV_COLLAPSE")


@pytest.mark.parametrize("mt", MEMS, ids=[f"minor on {m}" for m in MEMS])
def test_minor(mt: MemType) -> None:
    uut.need_type(mt, MINOR_FEATURES)
    run_minor(mt, wp=False)


@pytest.mark.parametrize("mt", MEMS, ids=[f"minor-wp on {m}" for m in MEMS])
def test_minor_wp(mt: MemType) -> None:
    uut.need_type(mt, MINOR_WP_FEATURES)
    run_minor(mt, wp=True)


@pytest.mark.tap("minor-collapse on shmem")
def test_minor_collapse() -> None:
    mt = MemType("shmem")
    uut.need_type(mt, abi.Feature.MINOR_SHMEM)
    if not system.pmd_size():
        pytest.skip("THP not supported (no hpage_pmd_size)")
    run_minor(mt, wp=False, collapse=True, npages=2 * system.pmd_size() // system.PAGE_SIZE)
