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

import os

import pytest

from lib import check
from lib.kernel import abi, hugetlb_pool, libc, needs, system, tasks
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import served

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


ARMS = [(mt, ev) for ev in (False, True) for mt in TYPES]


def _ids(base: str) -> list[str]:
    return [f"{base}{'-with-event' if ev else ''} on {mt}" for mt, ev in ARMS]


@pytest.mark.parametrize("mt,with_event", ARMS, ids=_ids("wp-fork"))
def test_wp_fork(mt: MemType, with_event: bool) -> None:
    r = _setup(mt, EV_FORK if with_event else 0)
    ps = mt.page_size
    with served(r, "process", mt.wp_feature | (EV_FORK if with_event else 0), abi.RegisterMode.WP) as s:
        u = s.uffd
        libc.fill(r.addr, 0x42, ps)
        u.writeprotect(r.addr, ps, True)
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


def gup_test_reason() -> str:
    """Why a FOLL_LONGTERM pin through gup_test is not possible here ('' if it is)."""
    path = "/sys/kernel/debug/gup_test"
    if os.path.exists(path):
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            return ""
        except OSError as e:
            return f"gup_test: {path}: {e.strerror} (Possibly CONFIG_GUP_TEST missing or unprivileged)"
    parts = []
    if not system.debugfs_mounted():
        parts.append("debugfs not mounted")
    cfg = system.config_enabled("CONFIG_GUP_TEST")
    if cfg is False:
        parts.append("kernel built without CONFIG_GUP_TEST")
    return f"gup_test unavailable: {path} missing ({', '.join(parts) or 'unknown cause'})"


def _pin(fd: int, addr: int, size: int) -> None:
    libc.ioctl(fd, abi.PIN_LONGTERM_TEST_START, abi.pin_longterm_test(addr, size, 0, 0),
               name="PIN_LONGTERM_TEST_START")


@pytest.mark.parametrize("mt,with_event", ARMS, ids=_ids("wp-fork-pin"))
def test_wp_fork_pin(mt: MemType, with_event: bool) -> None:
    why = gup_test_reason()
    if why:
        pytest.skip(why)
    r = _setup(mt, EV_FORK if with_event else 0)
    ps = mt.page_size
    with served(r, "process", mt.wp_feature | (EV_FORK if with_event else 0), abi.RegisterMode.WP) as s:
        u = s.uffd
        libc.fill(r.addr, 0x42, ps)
        u.writeprotect(r.addr, ps, True)
        fd = os.open("/sys/kernel/debug/gup_test", os.O_RDWR | os.O_CLOEXEC)
        try:
            _pin(fd, r.addr, ps)  # (1) R/O longterm pin in the parent: fork takes the early-COW path
            got = child_bit57(r.addr, with_event, s.handler, hpage=mt.size)
            check.eq(got, with_event, "child bit 57 after fork with a R/O pin")
            libc.ioctl(fd, abi.PIN_LONGTERM_TEST_STOP, 0, name="PIN_LONGTERM_TEST_STOP")
            # (2) the child pins (unshare / COR path), then reads its bit
            got = child_bit57(r.addr, with_event, s.handler, pre=lambda: _pin(fd, r.addr, ps), hpage=mt.size)
            check.eq(got, with_event, "child bit 57 after pinning in the child")
        finally:
            os.close(fd)
