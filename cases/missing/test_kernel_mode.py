"""Kernel-mode faults on registered memory (Documentation/admin-guide/mm/userfaultfd.rst,
UFFD_USER_MODE_ONLY since 5.11).

A read(2) into registered memory makes the kernel write the user buffer (copy_to_user), a
write(2) from it makes the kernel read it (copy_from_user): both fault in kernel mode.  On a
uffd opened without UFFD_USER_MODE_ONLY the fault is reported like any other (WRITE flag for
read(2), none for write(2)), served, and the syscall completes with the data.  On a uffd opened
with UFFD_USER_MODE_ONLY a kernel-mode fault is not handled: handle_userfault() refuses it,
the syscall fails with EFAULT and no message is queued.
"""

from __future__ import annotations

import errno
import os

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi, libc, needs
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.serve import served

MEMS = mem_types()
DATA = b"kernel-mode fault " * 16


def _io(op: str, addr: int) -> int:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        if op == "read":
            os.write(w, DATA)
            return libc.fd_read_into(r, addr, len(DATA))
        return libc.fd_write_from(w, addr, len(DATA))
    finally:
        os.close(r)
        os.close(w)


def run_kernel_mode(mt: MemType, op: str, user_mode_only: bool, open_user_mode_only: bool | None = None) -> None:
    """``open_user_mode_only`` (default: as expected) lets a negative control open the other kind."""
    umo = user_mode_only if open_user_mode_only is None else open_user_mode_only
    with support.make_area(mt, 1, alias=False) as a:
        with served(a.dst, "thread", mt.missing_feature, source=_src(a), user_mode_only=umo) as s:
            if user_mode_only:
                with check.raises_errno(errno.EFAULT, f"{op}(2) on registered memory with UFFD_USER_MODE_ONLY"):
                    _io(op, a.dst.addr)
                st = s.stats()
                check.eq(st.faults, [], "fault messages for a kernel-mode access with UFFD_USER_MODE_ONLY")
                return
            check.eq(_io(op, a.dst.addr), len(DATA), f"{op}(2) length")
            st = s.stats()
            if op == "read":
                check.eq(libc.read(a.dst.addr, len(DATA)), DATA, "data read(2) into the served page")
            else:
                check.eq(support.read_count(a.count_addr(0)), 1, "served page content")
        check.eq(st.errors, [], "handler errors")
        check.eq([f["address"] for f in st.faults], [a.dst.addr], "fault addresses")
        check.eq(bool(st.faults[0]["flags"] & abi.PagefaultFlag.WRITE), op == "read",
                 "WRITE flag (the kernel writes the buffer of read(2))")


class _src:
    """The area's src as a lib.kernel.handler source (the thread handler only needs .addr)."""

    def __init__(self, a: support.Area) -> None:
        self.addr, self.size = a.src.addr, a.size


CASES = [(m, op, umo) for umo in (False, True) for op in ("read", "write") for m in MEMS]


def _name(m: MemType, op: str, umo: bool) -> str:
    return f"{'user-mode-only ' if umo else ''}kernel-mode {op}(2) on {m}"


@pytest.mark.parametrize("mt,op,umo", CASES, ids=[_name(*c) for c in CASES])
def test_kernel_mode(mt: MemType, op: str, umo: bool) -> None:
    support.need_type(mt, npages=1)
    if umo:
        needs.uffd_features(mt.missing_feature, user_mode_only=True)
    else:
        needs.kernel_faults(f"the kernel's copy in {op}(2) faults on registered memory")
    run_kernel_mode(mt, op, umo)
