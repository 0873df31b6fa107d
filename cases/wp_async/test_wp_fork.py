"""uffd-unit-tests' wp-fork, wp-fork-with-event, wp-fork-pin, wp-fork-pin-with-event.

Upstream (tools/testing/selftests/mm/uffd-unit-tests.c wp-fork*; fix 49d6d7fb6313 "mm/uffd: fix pte marker when fork()
without fork event", a fix e2b-dev/infra depends on): protect page 0 of a WP-registered area; a fork()ed
child sees pagemap bit 57 clear unless UFFD_FEATURE_EVENT_FORK was negotiated (then the child
VMA stays registered and keeps it).  After a zap of the parent's page (MADV_DONTNEED on shared
memory, MADV_PAGEOUT on private) the protection persists as a pte marker / swap entry and a
second fork gives the child the same answer.  Unprotecting clears the bit, and a write
leaves it clear.  The pin variants take a FOLL_LONGTERM R/O pin through gup_test before the
fork (early COW) and in the child (unshare); without gup_test they skip, as upstream does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lib import check
from lib.kernel import abi, hugetlb_pool, libc, needs, system, tasks
from lib.kernel import gup_test as gup
from lib.kernel.memory import Region
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import Served, served

# Every uffd memory type at every hugetlb size.  The 1 GiB hugetlb ones take two pages and
# check the spare one right before each fork (lib.kernel.hugetlb_pool), as the COW area's cases do; see
# .ci/known-kernel-defects for what was measured on 1 GiB (a build where a forked child read
# wrong data) and what was not (no kernel regression).
TYPES = mem_types()
EV_FORK = int(abi.Feature.EVENT_FORK)
NPAGES = 4


def child_bit57(addr: int, with_event: bool, srv, pre=None, hpage: int = 0) -> bool:
    """Fork; the child reports its own bit 57 of ``addr`` (exit 10 = set, 11 = clear).

    With EVENT_FORK the fork waits until the monitor reads the FORK event: the monitor is a
    handler *process* (a thread could not run while os.fork() holds the GIL).  On hugetlb
    (``hpage``) the pool must still hold its spare page right before the fork.
    """
    before = sum(1 for e in srv.stats().events if e["event"] == "FORK")
    if hpage:
        hugetlb_pool.require_spare_before_fork(hpage)

    def body() -> int:
        if pre is not None:
            pre()
        with Pagemap() as pm:
            return 10 if pm.entry(addr).uffd_wp else 11

    res = tasks.reap(tasks.fork_call(body), 10)
    if with_event:
        tasks.wait_until(lambda: sum(1 for e in srv.stats().events if e["event"] == "FORK") == before + 1, 5,
                         "the FORK event to be read by the monitor")
    else:
        check.eq(sum(1 for e in srv.stats().events if e["event"] == "FORK"), before, "FORK events without the feature")
    check.true(res.exit_code in (10, 11), f"child verdict ({res.describe()})")
    return res.exit_code == 10


def _npages(mt: MemType) -> int:
    return 1 if mt.size >= system.GiB else NPAGES


def _setup(mt: MemType, features: int):
    """Map the case's memory; hugetlb takes its pages plus the spare a copy-on-write copy of the
    protected page needs (lib.kernel.hugetlb_pool: two pages on 1 GiB, as the COW area's cases)."""
    if mt.hugetlb:
        needs.hugetlb_size(mt.size)
        hugetlb_pool.require_before_map(mt.size, _npages(mt) + 1)
    needs.uffd_features(mt.wp_feature | features)
    return mt.map(_npages(mt))


@contextmanager
def _protected(mt: MemType, with_event: bool) -> Iterator[tuple[Region, Served]]:
    """The case's memory with page 0 filled and write-protected, served by a handler process
    (EVENT_FORK negotiated when ``with_event``)."""
    ev = EV_FORK if with_event else 0
    r = _setup(mt, ev)
    with served(r, "process", mt.wp_feature | ev, abi.RegisterMode.WP) as s:
        libc.fill(r.addr, 0x42, mt.page_size)
        s.uffd.writeprotect(r.addr, mt.page_size, True)
        yield r, s


ARMS = [(mt, ev) for ev in (False, True) for mt in TYPES]


def _ids(base: str) -> list[str]:
    return [f"{base}{'-with-event' if ev else ''} on {mt}" for mt, ev in ARMS]


@pytest.mark.parametrize("mt,with_event", ARMS, ids=_ids("wp-fork"))
def test_wp_fork(mt: MemType, with_event: bool) -> None:
    ps = mt.page_size
    with _protected(mt, with_event) as (r, s):
        u = s.uffd
        with Pagemap() as pm:
            check.true(pm.entry(r.addr).uffd_wp, "parent bit 57 after protecting page 0")
        got = child_bit57(r.addr, with_event, s.handler, hpage=mt.size)
        check.eq(got, with_event, "child bit 57 after fork (set iff EVENT_FORK)")
        try:
            libc.madvise(r.addr, ps, abi.Madv.DONTNEED if mt.shared else abi.Madv.PAGEOUT)
        except OSError:
            pass  # upstream ignores the result (PAGEOUT of hugetlb, no swap)
        with Pagemap() as pm:
            check.true(pm.entry(r.addr).uffd_wp, "parent bit 57 after the zap (pte marker / swap entry)")
        got = child_bit57(r.addr, with_event, s.handler, hpage=mt.size)
        check.eq(got, with_event, "child bit 57 after the zap and a second fork")
        u.writeprotect(r.addr, ps, False)
        with Pagemap() as pm:
            check.false(pm.entry(r.addr).uffd_wp, "bit 57 after mode 0")
        libc.touch_write(r.addr, 1)
        with Pagemap() as pm:
            check.false(pm.entry(r.addr).uffd_wp, "bit 57 after a write")


@pytest.mark.parametrize("mt,with_event", ARMS, ids=_ids("wp-fork-pin"))
def test_wp_fork_pin(mt: MemType, with_event: bool, gup_test: gup.GupTest) -> None:
    if gup_test.path is None:
        pytest.skip(gup_test.reason)
    ps = mt.page_size
    with _protected(mt, with_event) as (r, s), gup.Pin(gup_test.path) as pin:
        pin.start(r.addr, ps, fast=False)  # (1) R/O longterm pin in the parent: fork takes the early-COW path
        got = child_bit57(r.addr, with_event, s.handler, hpage=mt.size)
        check.eq(got, with_event, "child bit 57 after fork with a R/O pin")
        pin.stop()
        # (2) the child pins (unshare / COR path) through the shared file, then reads its bit
        got = child_bit57(r.addr, with_event, s.handler, pre=lambda: pin.start(r.addr, ps, fast=False), hpage=mt.size)
        check.eq(got, with_event, "child bit 57 after pinning in the child")
