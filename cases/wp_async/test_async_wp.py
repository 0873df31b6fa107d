"""UFFD_FEATURE_WP_ASYNC on every backing of the area (6.7+).

Documentation/admin-guide/mm/userfaultfd.rst ("Write Protect Notifications", asynchronous
mode) and pagemap.rst (PAGEMAP_SCAN): with WP_ASYNC a write to a protected page is resolved
by the kernel, no message is ever queued, the page loses its protection (bit 57 clears) and
PAGEMAP_SCAN reports it PAGE_IS_WRITTEN; pages only read keep bit 57.  PAGEMAP_SCAN with
PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC reports the written pages and protects them again
in the same call ("get and clear"): right after it every page is protected and a second
scan reports nothing.  On a THP the write splits the PMD mapping and only the written 4 KiB
subpages become written; on hugetlb the unit is the huge page.
"""

import pytest

from cases.wp_async.backings import backings
from cases.wp_async.support import wp_bits, wp_uffd
from lib import check
from lib.kernel import abi, libc
from lib.kernel.pagemap import Pagemap

BACKINGS = backings()
WRITTEN = int(abi.PageIs.WRITTEN)
SCAN_WP_MATCHING_ASYNC = abi.PM_SCAN_WP_MATCHING | abi.PM_SCAN_CHECK_WPASYNC


def plan(b):
    """(units to map, units to write)."""
    if b.hugetlb:
        return (2, [1]) if b.max_units() == 2 else (4, [1, 2])
    return 8, [1, 2, 5]


def written_units(res, base: int, unit: int) -> list[int]:
    """Units covered by the regions of a PAGEMAP_SCAN result, in order."""
    out = []
    for s, e, _ in res.regions:
        out.extend(range((s - base) // unit, (e - base) // unit))
    return out


def scan_written(r, wp: bool = False):
    with Pagemap() as pm:
        return pm.scan(r.addr, r.end, flags=SCAN_WP_MATCHING_ASYNC if wp else 0, vec_len=64, category_mask=WRITTEN,
                       return_mask=WRITTEN)


def async_area(b):
    """The populated area a WP_ASYNC case runs on: (region, unit, units, units to write)."""
    b.require(abi.Feature.WP_ASYNC)
    units, writes = plan(b)
    r = b.map(units)
    b.populate(r)
    unit = b.page_size
    return r, unit, r.size // unit, writes


def check_written(res, r, unit: int, want: list[int], what: str) -> None:
    """PAGEMAP_SCAN reported exactly the units ``want`` (the region-count oracle)."""
    check.eq(written_units(res, r.addr, unit), want, f"{what}: units reported PAGE_IS_WRITTEN")
    runs = sum(1 for i, u in enumerate(want) if i == 0 or want[i - 1] != u - 1)
    check.eq(res.count, runs, f"{what}: regions (adjacent written units merge)")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"wp-async writes never reach the handler on {b}" for b in BACKINGS])
def test_async_written(b) -> None:
    r, unit, n, writes = async_area(b)
    with wp_uffd(r, b.wp_feature | int(abi.Feature.WP_ASYNC)) as u:
        u.writeprotect(r.addr, r.size, True)
        check.eq(scan_written(r).count, 0, "written regions right after protecting")
        for i in range(n):
            libc.read(r.addr + i * unit, 64)
        for i in writes:
            libc.write(r.addr + i * unit + 8, b"async!")  # resolved in the kernel, never blocks
        check.eq(u.read_msgs(), [], "uffd messages (WP_ASYNC never queues one)")
        check.eq(wp_bits(r, unit), [i not in writes for i in range(n)], "bit 57 per unit (clear only where written)")
        check_written(scan_written(r), r, unit, writes, "after the writes")
        for i in writes:
            check.true(libc.compare(r.addr + i * unit + 8, b"async!"), f"unit {i}: the write landed")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"wp-async PM_SCAN_WP_MATCHING re-protects on {b}" for b in BACKINGS])
def test_async_wp_matching(b) -> None:
    r, unit, n, writes = async_area(b)
    with wp_uffd(r, b.wp_feature | int(abi.Feature.WP_ASYNC)) as u:
        u.writeprotect(r.addr, r.size, True)
        for i in writes:
            libc.touch_write(r.addr + i * unit, 1)
        check_written(scan_written(r, wp=True), r, unit, writes, "get-and-clear scan")
        check.eq(wp_bits(r, unit), [True] * n, "bit 57 per unit after the get-and-clear scan")
        check_written(scan_written(r), r, unit, [], "a second scan")
        again = [writes[-1]]
        libc.touch_write(r.addr + again[0] * unit, 2)
        check_written(scan_written(r, wp=True), r, unit, again, "after writing one unit again")
        check.eq(u.read_msgs(), [], "uffd messages")
