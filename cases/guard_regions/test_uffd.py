"""guard-regions.c's uffd case: guard regions do not break userfaultfd.

A range registered with UFFDIO_REGISTER_MODE_MISSING takes MADV_GUARD_INSTALL without a
userfault ("Guard the range. This should not trigger the uffd."), and every page then faults
with SIGSEGV as any guard page does, with no uffd intervention ("The guarding should behave as
usual").  Upstream runs it on its anon and shmem variants (its file variant skips: "uffd only
works on anon backing").  Beyond upstream: MADV_GUARD_REMOVE leaves an empty page table entry,
so the next access is an ordinary missing-page fault, which the registration reports as a
MISSING userfault again (Documentation/admin-guide/mm/userfaultfd.rst; guard markers: madvise(2)
MADV_GUARD_INSTALL/MADV_GUARD_REMOVE, mm/madvise.c).  Kernels without guard regions (before
6.13) skip: MADV_GUARD_INSTALL on a throw-away page is refused with EINVAL.
Reference: tools/testing/selftests/mm/guard-regions.c TEST_F(guard_regions, uffd).
"""

from __future__ import annotations

import pytest

from cases.guard_regions import oracles
from lib import check
from lib.kernel import abi, access, libc, memtypes, uffd
from lib.kernel.memtypes import MemType

PAGE = libc.PAGE_SIZE
NUM_PAGES = 10
VARIANTS = {"anon": MemType(memtypes.ANON), "shmem": MemType(memtypes.SHMEM)}


def needs_guard_regions() -> None:
    """A probe on a throw-away page of its own: does this kernel know MADV_GUARD_INSTALL?"""
    p = libc.mmap(PAGE)
    try:
        libc.madvise(p, PAGE, abi.Madv.GUARD_INSTALL)
    except OSError as e:
        pytest.skip(f"MADV_GUARD_INSTALL not supported: {check.errname(e.errno)}")
    finally:
        libc.munmap(p, PAGE)


def _setup(mem: MemType) -> tuple[int, uffd.Userfaultfd]:
    needs_guard_regions()
    mem.require(features=mem.missing_feature)
    r = mem.map(NUM_PAGES)
    u = uffd.open_for(mem.missing_feature)
    u.register(r.addr, NUM_PAGES * PAGE, abi.RegisterMode.MISSING)
    check.note("MADV_GUARD_INSTALL over the MISSING-registered range")
    libc.madvise(r.addr, NUM_PAGES * PAGE, abi.Madv.GUARD_INSTALL)
    return r.addr, u


@pytest.mark.parametrize("mem", list(VARIANTS.values()), ids=[f"guard_regions.{v}.uffd" for v in VARIANTS])
def test_uffd(mem: MemType) -> None:
    addr, u = _setup(mem)
    try:
        oracles.no_message(u, "after MADV_GUARD_INSTALL")
        oracles.guarded([addr + i * PAGE for i in range(NUM_PAGES)], u, "guarded page of the registered range")
        oracles.no_message(u, "after touching the guard pages")
        u.unregister(addr, NUM_PAGES * PAGE)
    finally:
        u.close()


@pytest.mark.parametrize("mem", list(VARIANTS.values()),
                         ids=[f"guard_regions.{v}.uffd: after MADV_GUARD_REMOVE an access is a MISSING userfault"
                              for v in VARIANTS])
def test_uffd_after_guard_remove(mem: MemType) -> None:
    addr, u = _setup(mem)
    try:
        libc.madvise(addr, NUM_PAGES * PAGE, abi.Madv.GUARD_REMOVE)
        oracles.no_message(u, "after MADV_GUARD_REMOVE")
        target = addr + 3 * PAGE
        a = access.read(target, timeout=10.0, watch_fd=u.fd, on_watch=lambda: u.read_msgs(1))
        check.true(a.blocked, f"the read after MADV_GUARD_REMOVE waits in a userfault ({a})")
        msgs = a.watched or []
        check.eq([(m.event, m.address) for m in msgs], [(abi.Event.PAGEFAULT, target)],
                 "the userfault the read raised (event, address)")
        check.false(msgs[0].is_wp or msgs[0].is_minor, f"a MISSING fault ({msgs[0]})")
    finally:
        u.close()
