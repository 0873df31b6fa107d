"""gup_longterm.c: longterm GUP pins (gup_test) and io_uring fixed buffers on file mappings.

Each of gup_longterm.c's ten test cases (R/W and R/O, GUP and GUP-fast, MAP_SHARED and
MAP_PRIVATE, and the two io_uring fixed-buffer cases) runs on each of its files: memfd,
tmpfile, local tmpfile and a hugetlb memfd of every hugetlb size (cases.gup_longterm.backings).
Steps as do_test: size the file (ftruncate, fallocate one page), map it shared or private,
write it (so GUP-fast finds it mapped), map it R/O for the R/O pins, then pin it longterm:
PIN_LONGTERM_TEST_START with or without PIN_LONGTERM_TEST_FLAG_USE_WRITE/USE_FAST through
/sys/kernel/debug/gup_test (CONFIG_GUP_TEST), or IORING_REGISTER_BUFFERS.  The expectation
and verdicts are cases.gup_longterm.oracles'.  The io_uring cases use raw syscalls
(lib.kernel.iouring; upstream builds them only with liburing).
Reference: tools/testing/selftests/mm/gup_longterm.c; mm/gup.c check_vma_flags.
"""

from __future__ import annotations

import errno
import os

import pytest

from cases.gup_longterm import backings
from cases.gup_longterm.oracles import CASES, GUP, PinCase, judge
from lib import check
from lib.kernel import abi, fstype, iouring, libc, setup_step
from lib.kernel.gup_test import GupTest, Pin

MATRIX = [(c, b) for c in CASES for b in backings.backings()]  # gup_longterm.c run_test_case order


def pin_gup(gup: GupTest, mem: int, size: int, case: PinCase) -> int:
    """PIN_LONGTERM_TEST_START (then STOP); 0 or the errno it failed with."""
    assert gup.path is not None
    with Pin(gup.path) as pin:
        try:
            pin.start(mem, size, fast=case.fast, write=case.rw)
        except OSError as e:
            if e.errno == errno.EINVAL:
                pytest.skip("PIN_LONGTERM_TEST_START failed (EINVAL)")
            return e.errno or 0
        try:
            pin.stop()
        except OSError as e:
            check.diag(f"[INFO] PIN_LONGTERM_TEST_STOP failed ({e.strerror})")
    return 0


def pin_iouring(mem: int, size: int) -> int:
    """IORING_REGISTER_BUFFERS of the range (then unregister); 0 or the errno it failed with."""
    why = iouring.memlock_limit_reason(size)
    if why:
        pytest.skip(f"io_uring_register_buffers() would be refused: {why}")
    try:
        ring = iouring.Ring(1)
    except iouring.IoUringUnavailable as e:
        pytest.skip(str(e))
    with ring:
        try:
            ring.register_buffer(mem, size)
        except OSError as e:
            return e.errno or 0
        ring.unregister_buffers()
    return 0


def do_test(case: PinCase, b: backings.FileBacking, gup: GupTest) -> None:
    """gup_longterm.c do_test on one file."""
    b.require()
    if case.via == GUP and gup.path is None:
        pytest.skip(gup.reason)
    with setup_step.required(f"creating the {b.kind} file"):
        fd = b.open()
    try:
        with setup_step.required("fstatfs()"):
            f_type = fstype.fs_type(fd)
        check.diag(f"file system: {fstype.name(f_type)}")
        if case.unknown_fs(f_type):
            pytest.skip(f"Unknown filesystem ({fstype.name(f_type)}): gup_longterm.c knows whether R/W "
                        "longterm pins of shared mappings work only on tmpfs, hugetlbfs, btrfs, ext4 and xfs")
        size = b.size
        with setup_step.required("ftruncate()"):
            os.ftruncate(fd, size)
        try:
            libc.fallocate(fd, 0, 0, size)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                pytest.skip(f"fallocate() not supported by filesystem ({fstype.name(f_type)})")
            raise setup_step.SetupFailed(setup_step.message("fallocate() of one page", e)) from e
        with setup_step.required(f"mmap() {'MAP_SHARED' if case.shared else 'MAP_PRIVATE'}"):
            mem = libc.mmap(size, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED if case.shared else abi.MAP_PRIVATE,
                            fd, 0)
        try:
            libc.fill(mem, 0, size)  # fault it in, so GUP-fast can pin it directly
            if case.via == GUP and not case.rw:
                with setup_step.required("mprotect(PROT_READ)"):
                    libc.mprotect(mem, size, abi.PROT_READ)
            err = pin_gup(gup, mem, size, case) if case.via == GUP else pin_iouring(mem, size)
            judge(case, f_type, err)
        finally:
            libc.munmap(mem, size)
    finally:
        os.close(fd)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("case,b", MATRIX, ids=[f"{c.desc} ... {b.suffix}" for c, b in MATRIX])
def test_gup_longterm(case: PinCase, b: backings.FileBacking, gup_test: GupTest) -> None:
    do_test(case, b, gup_test)
