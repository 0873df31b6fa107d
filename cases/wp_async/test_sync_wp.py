"""Synchronous uffd write-protection on every backing of the area.

Documentation/admin-guide/mm/userfaultfd.rst ("Write Protect Notifications"); uffd-unit-tests'
default handler resolves WP faults exactly this way (UFFDIO_WRITEPROTECT mode 0):
- a write to a protected page raises UFFD_EVENT_PAGEFAULT with UFFD_PAGEFAULT_FLAG_WP|WRITE;
  the writer sleeps (state S) and its write does not land until the monitor unprotects the
  page with mode 0, which also wakes it; the write then lands and bit 57 is clear;
- a read of a protected page never faults;
- pagemap bit 57 is set by UFFDIO_WRITEPROTECT mode WP and cleared by mode 0, per unit.
On a THP backing the protection is applied to the whole THP and the fault resolved for one
4 KiB subpage (which splits the PMD mapping of a PMD-sized THP).
"""

import pytest

from cases.wp_async.backings import backings
from cases.wp_async.support import check_sync_wp, protected, read_does_not_fault, sync_wp_write, wp_bits, wp_uffd
from lib import check
from lib.kernel import libc

BACKINGS = backings()
UNITS = 2


@pytest.mark.parametrize("b", BACKINGS, ids=[f"sync wp write blocks until unprotected on {b}" for b in BACKINGS])
def test_sync_wp_write(b) -> None:
    b.require(units=UNITS)
    with protected(b, UNITS, 0x11) as (r, u):
        unit = b.page_size
        target = r.addr + unit + 64 if r.size >= 2 * unit else r.addr + 64
        old, new = b"\x11" * 32, b"kmm-sync-wp-write".ljust(32, b"!")
        obs = sync_wp_write(u, target, unit, new)
        check_sync_wp(obs, target, old, new)
        bits = wp_bits(r, unit)
        want = [(r.addr + i * unit) // unit != target // unit for i in range(r.size // unit)]
        check.eq(bits, want, "bit 57 per unit: only the resolved unit is unprotected")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"sync wp read does not fault on {b}" for b in BACKINGS])
def test_sync_wp_read(b) -> None:
    b.require(units=UNITS)
    with protected(b, UNITS, 0x22) as (r, u):
        finished, msgs = read_does_not_fault(u, r.addr + r.size - 4096, 4096)
        check.eq(msgs, [], "uffd messages raised by a read of protected memory")
        check.true(finished, "the read of protected memory completes without a monitor")
        check.true(libc.is_filled(r.addr + r.size - 4096, 0x22, 4096), "the read returns the page content")
        check.eq(wp_bits(r, b.page_size), [True] * (r.size // b.page_size), "bit 57 after a read (reads keep it)")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"pagemap bit 57 follows protect and unprotect on {b}" for b in BACKINGS])
def test_bit57_follows(b) -> None:
    b.require(units=UNITS)
    r = b.map(UNITS)
    b.populate(r)
    n = r.size // b.page_size
    with wp_uffd(r, b.wp_feature) as u:
        check.eq(wp_bits(r, b.page_size), [False] * n, "bit 57 after register, before protect")
        u.writeprotect(r.addr, r.size, True)
        check.eq(wp_bits(r, b.page_size), [True] * n, "bit 57 after UFFDIO_WRITEPROTECT mode WP")
        u.writeprotect(r.addr, b.page_size, False)
        check.eq(wp_bits(r, b.page_size), [False] + [True] * (n - 1), "bit 57 after mode 0 on the first unit")
        u.writeprotect(r.addr, b.page_size, True)
        check.eq(wp_bits(r, b.page_size), [True] * n, "bit 57 after protecting the first unit again")
        u.writeprotect(r.addr, r.size, False)
        check.eq(wp_bits(r, b.page_size), [False] * n, "bit 57 after mode 0 on the whole range")
