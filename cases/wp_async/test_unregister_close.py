"""Leaving write-protection: UFFDIO_UNREGISTER, and close() without unregistering.

Documentation/admin-guide/mm/userfaultfd.rst: UFFDIO_UNREGISTER of a WP range resolves its
protection (fs/userfaultfd.c userfaultfd_clear_vma: uffd_wp_range(..., false)), so bit 57
clears on present pages and markers alike and writes no longer trap.  Closing the uffd
without unregistering must do the same: before c88033efe9a3 (6.9, CVE-2024-36881) release
only dropped the VMA flags and left uffd-wp bits in the page tables (syzbot WARN with
page_table_check; a kernel fix e2b-dev/infra depends on).  The close case reports what this kernel does in
its diagnostics (lib.check.diag: JUnit body, summary.json) either way and fails if bits are left behind.
"""

import pytest

from cases.wp_async.backings import backings
from cases.wp_async.support import SETTLE_TIMEOUT, wp_bits
from lib import check
from lib.kernel import abi, libc
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import open_for

BACKINGS = backings()
UNPOP = int(abi.Feature.WP_UNPOPULATED)


def protected_region(b):
    """Unit 0 present and protected, the last unit an untouched protected marker."""
    r = b.map(2)
    libc.fill(r.addr, 0x44, b.page_size)
    u = open_for(b.wp_feature | UNPOP)
    u.register(r.addr, r.size, abi.RegisterMode.WP)
    u.writeprotect(r.addr, r.size, True)
    n = r.size // b.page_size
    check.eq(wp_bits(r, b.page_size), [True] * n, "bit 57 after protecting (present unit and markers)")
    return r, u, n


def writes_freely(r, unit: int) -> None:
    t = Toucher.call(lambda: (libc.write(r.addr, b"free"), libc.write(r.end - unit, b"free")), "writer")
    check.true(t.settle(SETTLE_TIMEOUT), "writes complete without a monitor (not blocked in a userfault)")
    check.true(libc.compare(r.addr, b"free") and libc.compare(r.end - unit, b"free"), "the writes landed")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"UFFDIO_UNREGISTER clears uffd-wp on {b}" for b in BACKINGS])
def test_unregister_clears(b) -> None:
    b.require(UNPOP, units=2)
    r, u, n = protected_region(b)
    try:
        u.unregister(r.addr, r.size)
        check.eq(wp_bits(r, b.page_size), [False] * n, "bit 57 after UFFDIO_UNREGISTER")
        writes_freely(r, b.page_size)
        check.eq(u.read_msgs(), [], "messages")
    finally:
        u.close()


@pytest.mark.parametrize("b", BACKINGS,
                         ids=[f"close without unregister clears uffd-wp on {b} (CVE-2024-36881)" for b in BACKINGS])
def test_close_clears(b) -> None:
    b.require(UNPOP, units=2)
    r, u, n = protected_region(b)
    u.close()
    bits = wp_bits(r, b.page_size)
    left = sum(bits)
    check.diag(f"kernel behaviour: after close() without UFFDIO_UNREGISTER {left} of {n} units keep bit 57 "
               + ("(fixed: c88033efe9a3, 6.9)" if not left else "(CVE-2024-36881 not fixed on this kernel)"))
    check.eq(bits, [False] * n, "bit 57 after close() without unregister (left set = CVE-2024-36881 unfixed)")
    writes_freely(r, b.page_size)
