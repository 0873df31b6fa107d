"""UFFD_FEATURE_WP_UNPOPULATED and uffd-wp pte markers.

uffd-unit-tests' ``wp-unpopulated`` (anon): with WP_UNPOPULATED, UFFDIO_WRITEPROTECT on a
never-touched page installs a pte marker that pagemap shows as bit 57; mode 0 removes it;
MADV_DONTNEED drops it (anon zaps drop markers); reading a marker page must not crash and
returns zeros (a protected zero page).  On shmem and hugetlb markers exist without the feature
(file-backed uffd-wp, 5.19) and survive MADV_DONTNEED (the zap re-installs them), which is
what keeps dirty tracking of a removed page alive there (e2b-dev/infra's dirty-tracking tests: anon 4 KiB
loses it, hugetlb keeps it).  Per backing: marker on an untouched unit, a read returns zeros
without a message and keeps the protection, a write traps with UFFD_PAGEFAULT_FLAG_WP.
"""

import pytest

from cases.wp_async.backings import WpBacking, backings
from cases.wp_async.support import SETTLE_TIMEOUT, read_does_not_fault, sync_wp_write, wp_bits, wp_uffd
from lib import check
from lib.kernel import abi, libc
from lib.kernel.pagemap import Pagemap
from lib.kernel.toucher import Toucher

BACKINGS = backings()
UNPOP = int(abi.Feature.WP_UNPOPULATED)


@pytest.mark.tap("wp-unpopulated on anon")
def test_wp_unpopulated_upstream() -> None:
    b = WpBacking("anon")
    b.require(UNPOP)
    r = b.map(1)
    p = r.addr
    with wp_uffd(r, b.wp_feature | UNPOP) as u:
        u.writeprotect(p, 4096, True)
        check.eq(wp_bits(r, 4096), [True], "bit 57 on an untouched, protected page (pte marker)")
        u.writeprotect(p, 4096, False)
        check.eq(wp_bits(r, 4096), [False], "bit 57 after mode 0")
        u.writeprotect(p, 4096, True)
        libc.madvise(p, 4096, abi.Madv.DONTNEED)
        check.eq(wp_bits(r, 4096), [False], "bit 57 after MADV_DONTNEED (a zap drops the marker)")
        libc.write(p, b"x")  # no marker left: no fault
        check.eq(wp_bits(r, 4096), [False], "bit 57 after a write")
        libc.madvise(p, 4096, abi.Madv.DONTNEED)
        u.writeprotect(p, 4096, True)
        finished, msgs = read_does_not_fault(u, p, 4096)
        check.true(finished and not msgs, "a read of a marker page completes without a message")
        check.true(libc.is_filled(p, 0, 4096), "a read of a marker page returns zeros")
        libc.madvise(p, 4096, abi.Madv.DONTNEED)


@pytest.mark.parametrize("b", BACKINGS, ids=[f"wp-unpopulated marker on {b}" for b in BACKINGS])
def test_marker(b) -> None:
    b.require(UNPOP, units=2)
    r = b.map(2)
    unit = b.page_size
    n = r.size // unit
    with wp_uffd(r, b.wp_feature | UNPOP) as u:
        u.writeprotect(r.addr, r.size, True)
        check.eq(wp_bits(r, unit), [True] * n, "bit 57 on untouched, protected units (markers)")
        with Pagemap() as pm:
            check.diag(f"pagemap entry of a uffd-wp marker: {pm.entry(r.addr)} (anon/shmem markers read as swap|wp)")
        finished, msgs = read_does_not_fault(u, r.addr, 4096)
        check.eq(msgs, [], "messages raised by reading a marker unit")
        check.true(finished, "the read completes")
        check.true(libc.is_filled(r.addr, 0, 4096), "a marker unit reads as zeros")
        check.eq(wp_bits(r, unit)[0], True, "bit 57 of the unit after the read (still protected)")
        target = r.addr + (n - 1) * unit + 128
        obs = sync_wp_write(u, target, unit, b"marker-write")
        check.true(obs.fault is not None and obs.fault.is_wp, f"a write to a marker unit traps with the WP flag: {obs}")
        check.true(obs.writer_done and not obs.refaults, "the write completes after mode 0")
        check.true(libc.compare(target, b"marker-write"), "the write landed")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"MADV_DONTNEED on protected memory on {b}" for b in BACKINGS])
def test_dontneed(b) -> None:
    """anon: the zap drops protection of present pages and markers alike; file: kept."""
    b.require(UNPOP, units=2)
    r = b.map(2)
    unit = b.page_size
    libc.fill(r.addr, 0x33, unit)  # first unit present, the rest never touched
    n = r.size // unit
    with wp_uffd(r, b.wp_feature | UNPOP) as u:
        u.writeprotect(r.addr, r.size, True)
        libc.madvise(r.addr, r.size, abi.Madv.DONTNEED)
        keep = not b.anonymous
        how = "file memory keeps" if keep else "anon drops"
        check.eq(wp_bits(r, unit), [keep] * n, f"bit 57 after MADV_DONTNEED ({how} it)")
        if keep:
            obs = sync_wp_write(u, r.addr, unit, b"after-zap")
            check.true(obs.fault is not None and obs.fault.is_wp, "a write after the zap still traps with the WP flag")
            check.true(obs.writer_done, "the write completes after mode 0")
        else:
            t = Toucher.call(lambda: libc.write(r.addr, b"after-zap"), "writer")
            check.true(t.settle(SETTLE_TIMEOUT), "a write after the zap completes without the monitor (no userfault)")
            check.eq(u.read_msgs(), [], "messages (protection is gone)")
