"""poison, as uffd-unit-tests (UFFDIO_POISON, since 6.6).

The area is registered MISSING; the register mask must offer COPY and POISON.  The handler
answers a fault on an even page with UFFDIO_POISON (``updated == page_size``) and on an odd page
with a COPY of zeros.  Reading every page: exactly the even pages raise SIGBUS (a poison marker
reports as VM_FAULT_HWPOISON: si_code BUS_MCEERR_AR with CONFIG_MEMORY_FAILURE, BUS_ADRERR
without; noted, not checked), the odd pages read zero.
"""

from __future__ import annotations

import pytest

from cases.missing import support
from lib import check
from lib.check import note
from lib.kernel import abi
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.uffd import Msg, Userfaultfd, open_for

MEMS = mem_types()
BUS_MCEERR_AR = 4
POISON_PAGES = 4  # at least this many (uffd-unit-tests skips below: "Too less pages for POISON test")


def poison_handler(a: support.Area, u: Userfaultfd, stats: support.FaultStats):
    ps = a.page_size

    def handle(m: Msg) -> None:
        if m.event != abi.Event.PAGEFAULT or m.flags & (abi.PagefaultFlag.WP | abi.PagefaultFlag.MINOR):
            raise AssertionError(f"unexpected message {m}")
        page = m.address & ~(ps - 1)
        if ((page - a.dst.addr) // ps) % 2:
            support.copy_page(u, page, support.zero_source(ps), ps)
        else:
            check.eq(u.poison(page, ps), ps, "uffdio_poison.updated")
        stats.missing += 1

    return handle


def run_poison(mt: MemType, make_handler=poison_handler) -> None:
    npages = max(POISON_PAGES, min(support.area_pages(mt), 16))
    with support.make_area(mt, npages, counters=False, alias=False) as a, open_for(
            support.features_for(mt, abi.Feature.POISON)) as u:
        ps = a.page_size
        mask = u.register(a.dst.addr, a.size)
        check.mask_has(mask, abi.ioctl_mask(abi.IoctlBit.COPY, abi.IoctlBit.POISON), "register ioctls")
        stats = support.FaultStats()
        with support.PollThread(u, make_handler(a, u, stats), (a.dst.addr, a.size), stats) as pt, \
                support.SigbusCatcher(ps, lambda page: support.replace_page(page, ps)) as c:
            nonzero = [nr for nr in range(a.npages) if not support.is_zero(a.page(nr), ps)]
            pt.stop()
        check.eq(stats.errors + c.errors, [], "handler errors")
        check.eq(c.pages(), [a.page(nr) for nr in range(0, a.npages, 2)], "pages that raised SIGBUS")
        codes = sorted({code for _, code in c.hits})
        note(f"poison SIGBUS si_code {codes} (BUS_MCEERR_AR={BUS_MCEERR_AR} with CONFIG_MEMORY_FAILURE, "
             f"else BUS_ADRERR=2)")
        check.eq(nonzero, [], "pages not reading zero")


@pytest.mark.parametrize("mt", MEMS, ids=[f"poison on {m}" for m in MEMS])
def test_poison(mt: MemType) -> None:
    support.need_type(mt, abi.Feature.POISON, npages=POISON_PAGES)
    run_poison(mt)
