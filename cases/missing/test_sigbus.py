"""sigbus and sigbus-wp, as uffd-unit-tests (UFFD_FEATURE_SIGBUS with EVENT_FORK).

With UFFD_FEATURE_SIGBUS a userfault raises SIGBUS in the faulting thread instead of queueing a
message (Documentation/admin-guide/mm/userfaultfd.rst).  Phase 1, in this process: each first
access to a page of the first half raises SIGBUS; the signal handler resolves the page with
UFFDIO_COPY (COPY_MODE_WP for sigbus-wp, whose write-back then raises a second SIGBUS resolved
by unprotecting) and the access is retried.  Every page signals exactly once (twice with wp),
never repeatedly, and the counters read back.  Phase 2: release the pages and fork a child
(EVENT_FORK: the child inherits the registration); every access of the child to the first half
raises SIGBUS too (the child maps a fresh page over it and counts), and the monitor receives no
page-fault message at all, only the FORK event.
"""

from __future__ import annotations

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.serve import flush, served

MEMS = mem_types()
SIGBUS_FEATURES = abi.Feature.SIGBUS | abi.Feature.EVENT_FORK


def child_phase(a: support.Area, half: int) -> None:
    with support.SigbusCatcher(a.page_size, lambda page: support.replace_page(page, a.page_size)) as c:
        for nr in range(half):
            support.read_count(a.count_addr(nr))
    if c.errors:
        raise AssertionError("; ".join(c.errors))
    check.eq(c.pages(), [a.page(nr) for nr in range(half)], "pages that raised SIGBUS in the child")


def run_sigbus(mt: MemType, wp: bool, resolve: bool = True) -> None:
    feats = support.features_for(mt, SIGBUS_FEATURES, mt.wp_feature if wp else 0)
    mode = abi.RegisterMode.MISSING | (abi.RegisterMode.WP if wp else 0)
    with support.make_area(mt, alias=False) as a, served(a.dst, "process", feats, mode) as s:
        u, ps = s.uffd, a.page_size
        half = (a.npages + 1) // 2
        steps: dict[int, int] = {}

        def on_sigbus(page: int) -> None:
            nr = (page - a.dst.addr) // ps
            step = steps.get(nr, 0)
            steps[nr] = step + 1
            if step == 0 and resolve:
                support.copy_page(u, page, a.src_page(nr), ps, wp)
            elif step == 1 and wp:
                u.writeprotect(page, ps, False)
            else:
                raise AssertionError(f"Signal repeated on page {nr}")

        with support.SigbusCatcher(ps, on_sigbus) as c:
            for nr in range(half):
                count = support.read_count(a.count_addr(nr))
                check.eq(count, a.count_verify[nr], f"nr {nr} counter")
                support.write_count(a.count_addr(nr), count)  # write back: a WP fault with wp
        check.eq(c.errors, [], "SIGBUS handling in phase 1")
        per_page = 2 if wp else 1
        check.eq(c.pages(), [a.page(nr) for nr in range(half) for _ in range(per_page)],
                 "pages that raised SIGBUS in phase 1, in order")
        a.release()
        err = support.Child(lambda: child_phase(a, half)).finish(30)
        check.eq(err, "", "phase 2 child")
        flush(s.handler)  # the fork returned once the FORK event was read, maybe not yet recorded
        st = s.stats()
        check.eq(st.faults, [], "page-fault messages seen by the monitor")
        check.eq([e["event"] for e in st.events], ["FORK"], "events seen by the monitor")
        check.eq(st.errors, [], "monitor errors")


@pytest.mark.parametrize("mt", MEMS, ids=[f"sigbus on {m}" for m in MEMS])
def test_sigbus(mt: MemType) -> None:
    support.need_type(mt, SIGBUS_FEATURES)
    run_sigbus(mt, wp=False)


@pytest.mark.parametrize("mt", MEMS, ids=[f"sigbus-wp on {m}" for m in MEMS])
def test_sigbus_wp(mt: MemType) -> None:
    support.need_type(mt, SIGBUS_FEATURES | mt.wp_feature)
    run_sigbus(mt, wp=True)
