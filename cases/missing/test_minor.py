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
upstream checks this on its area) with the same content.  Upstream skips when MADV_COLLAPSE
fails; here skips come only from probes (THP, kernel 6.1+, shmem_enabled not "deny"),
EAGAIN/ENOMEM (no huge page to be had) is "cannot test", any other error a failure.
"""

from __future__ import annotations

import errno
import os

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi, libc, setup_step, system
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.pagemap import Pagemap, smaps_kb
from lib.kernel.uffd import open_for

MEMS = [m for m in mem_types(("shmem", "hugetlb"))]
MINOR_FEATURES = abi.Feature.MINOR_HUGETLBFS | abi.Feature.MINOR_SHMEM
MINOR_WP_FEATURES = MINOR_FEATURES | abi.Feature.PAGEFAULT_FLAG_WP | abi.Feature.WP_UNPOPULATED


def expected_byte(p: int) -> int:
    return ~(p % 255) & 0xFF


def run_minor(mt: MemType, wp: bool, collapse: bool = False, npages: int | None = None,
              handler_factory=support.default_handler) -> None:
    feats = MINOR_WP_FEATURES if wp else MINOR_FEATURES
    align = system.pmd_size() if collapse else 0
    with support.make_area(mt, npages, counters=False, align=align, alias=False) as a, open_for(feats) as u:
        a.dst_alias = alias = support.alias_of(a.dst, align)
        ps = a.page_size
        mode = abi.RegisterMode.MINOR | (abi.RegisterMode.WP if wp else 0)
        u.register(alias.addr, a.size, mode)
        for p in range(a.npages):
            libc.fill(a.page(p), p % 255, ps)
        stats = support.FaultStats()
        with support.PollThread(u, handler_factory(a, u, stats, wp, alias), (alias.addr, a.size), stats) as pt:
            bad = [p for p in range(a.npages) if not support.filled(alias.addr + p * ps, expected_byte(p), ps)]
            pt.stop()
        check.eq(stats.errors, [], "handler errors")
        check.eq(bad, [], "alias pages with unexpected content")
        check.eq((stats.missing, stats.minor), (0, a.npages), "missing and minor faults")
        if wp:
            with Pagemap() as pm:
                unprotected = [p for p, e in enumerate(pm.entries(alias.addr, a.npages, ps)) if not e.uffd_wp]
            check.eq(unprotected, [], "alias pages without the uffd-wp bit after CONTINUE_MODE_WP")
        if collapse:
            collapse_or_cannot_test(alias.addr, a.size)
            check.eq(smaps_kb(alias.addr, "ShmemPmdMapped"), a.size // 1024, "ShmemPmdMapped of the alias (kB)")
            bad = [p for p in range(a.npages) if not support.filled(alias.addr + p * ps, expected_byte(p), ps)]
            check.eq(bad, [], "alias pages with unexpected content after MADV_COLLAPSE")


MADV_COLLAPSE_SINCE = (6, 1)  # 7d8faaf15545 "mm/madvise: introduce MADV_COLLAPSE sync hugepage collapse"


def kernel_release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def require_shmem_collapse() -> None:
    """The probes of minor-collapse, none of which is MADV_COLLAPSE itself: THP built in,
    a kernel with MADV_COLLAPSE (6.1, shmem support in the same series), shmem THP not
    forbidden (shmem_enabled "deny")."""
    if not system.pmd_size():
        pytest.skip("THP not supported (no hpage_pmd_size)")
    if kernel_release() < MADV_COLLAPSE_SINCE:
        pytest.skip(f"MADV_COLLAPSE is new in 6.1 (7d8faaf15545); kernel {os.uname().release}")
    if system.selected(system.read_text(f"{system.THP}/shmem_enabled", "")) == "deny":
        pytest.skip("shmem THP denied (transparent_hugepage/shmem_enabled: deny)")


def collapse_or_cannot_test(addr: int, size: int) -> None:
    """MADV_COLLAPSE on the alias, retried once on EAGAIN (as khugepaged's madvise path).
    EAGAIN/ENOMEM: no huge page could be had, no kernel guarantee (cannot test); any other
    error on a kernel that passed require_shmem_collapse is a failure."""
    for attempt in range(2):
        try:
            libc.madvise(addr, size, abi.Madv.COLLAPSE)
            return
        except OSError as e:
            if e.errno == errno.EAGAIN and attempt == 0:
                continue
            if e.errno in (errno.EAGAIN, errno.ENOMEM):
                raise check.CannotTest(f"MADV_COLLAPSE found no huge page to collapse into: {e.strerror}") from e
            raise setup_step.SetupFailed(setup_step.message("MADV_COLLAPSE of the alias", e)) from e


@pytest.mark.parametrize("mt", MEMS, ids=[f"minor on {m}" for m in MEMS])
def test_minor(mt: MemType) -> None:
    support.need_type(mt, MINOR_FEATURES)
    run_minor(mt, wp=False)


@pytest.mark.parametrize("mt", MEMS, ids=[f"minor-wp on {m}" for m in MEMS])
def test_minor_wp(mt: MemType) -> None:
    support.need_type(mt, MINOR_WP_FEATURES)
    run_minor(mt, wp=True)


@pytest.mark.tap("minor-collapse on shmem")
def test_minor_collapse() -> None:
    mt = MemType("shmem")
    support.need_type(mt, abi.Feature.MINOR_SHMEM)
    require_shmem_collapse()
    run_minor(mt, wp=False, collapse=True, npages=2 * system.pmd_size() // system.PAGE_SIZE)
