"""register-ioctls and zeropage, as uffd-unit-tests (selftests/mm/uffd-unit-tests.c).

register-ioctls: UFFDIO_REGISTER of one page with every MISSING/WP/MINOR combination.  No mode,
or MINOR on anonymous memory, is EINVAL; otherwise the returned ``ioctls`` mask holds WAKE, COPY
(missing), WRITEPROTECT (wp) and CONTINUE (minor).  fs/userfaultfd.c userfaultfd_register() also
clears WRITEPROTECT from the mask unless WP was asked for and CONTINUE unless MINOR was, so the
mask matches the mode exactly in those two bits (checked here beyond upstream).

zeropage: register one page MISSING (and its alias, where the type has one).  Base-page types
offer UFFDIO_ZEROPAGE: it returns ``zeropage == page_size``, a repeat through the alias (the same
address for anon) fails with -EEXIST and the page reads zero.  hugetlb does not offer it
(UFFD_API_RANGE_IOCTLS_BASIC): the ioctl fails with ``zeropage == -EINVAL``.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.uffd import Userfaultfd, open_for

MEMS = mem_types()
REGISTER_FEATURES = (abi.Feature.MISSING_HUGETLBFS | abi.Feature.MISSING_SHMEM | abi.Feature.PAGEFAULT_FLAG_WP
                     | abi.Feature.WP_HUGETLBFS_SHMEM | abi.Feature.MINOR_HUGETLBFS | abi.Feature.MINOR_SHMEM)


def mode_of(miss: bool, wp: bool, minor: bool) -> int:
    return ((abi.RegisterMode.MISSING if miss else 0) | (abi.RegisterMode.WP if wp else 0)
            | (abi.RegisterMode.MINOR if minor else 0))


def check_register_combo(register: Callable[[int], int], unregister: Callable[[], None], anon: bool,
                         miss: bool, wp: bool, minor: bool) -> None:
    """One combination: EINVAL where upstream expects it, else the mask matches the mode."""
    what = f"register (miss={int(miss)}, wp={int(wp)}, minor={int(minor)})"
    mode = mode_of(miss, wp, minor)
    if (minor and anon) or not mode:
        with check.raises_errno(errno.EINVAL, what):
            register(mode)
        return
    mask = register(mode)
    try:
        want = abi.ioctl_mask(abi.IoctlBit.WAKE) | (abi.ioctl_mask(abi.IoctlBit.COPY) if miss else 0)
        want |= abi.ioctl_mask(abi.IoctlBit.WRITEPROTECT) if wp else 0
        want |= abi.ioctl_mask(abi.IoctlBit.CONTINUE) if minor else 0
        check.mask_has(mask, want, f"{what} ioctls")
        check.eq(bool(mask & abi.ioctl_mask(abi.IoctlBit.WRITEPROTECT)), wp, f"{what}: WRITEPROTECT in ioctls")
        check.eq(bool(mask & abi.ioctl_mask(abi.IoctlBit.CONTINUE)), minor, f"{what}: CONTINUE in ioctls")
    finally:
        unregister()


def run_register_ioctls(u: Userfaultfd, addr: int, length: int, anon: bool) -> None:
    for miss, wp, minor in itertools.product((False, True), repeat=3):
        check_register_combo(lambda m: u.register(addr, length, m), lambda: u.unregister(addr, length),
                             anon, miss, wp, minor)


@pytest.mark.parametrize("mt", MEMS, ids=[f"register-ioctls on {m}" for m in MEMS])
def test_register_ioctls(mt: MemType) -> None:
    support.need_type(mt, REGISTER_FEATURES, npages=1)
    with support.make_area(mt, 1, counters=False) as a, open_for(REGISTER_FEATURES) as u:
        run_register_ioctls(u, a.dst.addr, a.page_size, mt.kind == "anon")


def check_zeropage(u: Userfaultfd, addr: int, alias: int | None, page_size: int, has_zeropage: bool) -> None:
    """uffd-unit-tests' do_uffdio_zeropage + retry_uffdio_zeropage + the zero check."""
    if not has_zeropage:
        with check.raises_errno(errno.EINVAL, "UFFDIO_ZEROPAGE where the register mask lacks it") as c:
            u.zeropage(addr, page_size)
        check.eq(c[0].result, -errno.EINVAL, "uffdio_zeropage.zeropage")
        return
    check.eq(u.zeropage(addr, page_size), page_size, "uffdio_zeropage.zeropage")
    with check.raises_errno(errno.EEXIST, "UFFDIO_ZEROPAGE again (through the alias)") as c:
        u.zeropage(alias if alias is not None else addr, page_size)
    check.eq(c[0].result, -errno.EEXIST, "repeated uffdio_zeropage.zeropage")
    check.true(support.is_zero(addr, page_size), "the zero-filled page reads zero")


@pytest.mark.parametrize("mt", MEMS, ids=[f"zeropage on {m}" for m in MEMS])
def test_zeropage(mt: MemType) -> None:
    support.need_type(mt, npages=1)
    with support.make_area(mt, 1, counters=False) as a, open_for(mt.missing_feature) as u:
        mask = u.register(a.dst.addr, a.page_size)
        if a.dst_alias is not None:
            u.register(a.dst_alias.addr, a.page_size)
        has = bool(mask & abi.ioctl_mask(abi.IoctlBit.ZEROPAGE))
        check.eq(has, not mt.hugetlb, "UFFDIO_ZEROPAGE offered by the register mask")
        check_zeropage(u, a.dst.addr, a.dst_alias.addr if a.dst_alias else None, a.page_size, has)
        u.unregister(a.dst.addr, a.page_size)
        if a.dst_alias is not None:
            u.unregister(a.dst_alias.addr, a.page_size)


