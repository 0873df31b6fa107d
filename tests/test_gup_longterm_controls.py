"""Negative controls of the gup_longterm area (cases/gup_longterm): its oracle must be able to fail.

docs/ARCHITECTURE.md rule 3.  The judgement (cases.gup_longterm.oracles.judge) must report a
longterm pin that succeeded where gup_longterm.c expects the kernel to refuse it, a refusal
where it expects success, and an errno that is neither; and the real case, run against this
kernel with a wrong expectation about the file system, must fail both ways (the kernel
refuses a R/W io_uring pin of a shared ext4 file and accepts one of a shared memfd).  Also:
the case list carries gup_longterm.c's exact names, and fstatfs()'s f_type (lib.kernel.fstype,
abi.statfs) reads tmpfs and hugetlbfs for memfds.
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from cases.gup_longterm import backings, oracles
from cases.gup_longterm.test_gup_longterm import do_test
from lib.kernel import abi, fstype, iouring, system
from lib.kernel.gup_test import GupTest
from lib.runner import isolation

UPSTREAM_NAMES = [
    "R/W longterm GUP pin in MAP_SHARED file mapping",
    "R/W longterm GUP-fast pin in MAP_SHARED file mapping",
    "R/O longterm GUP pin in MAP_SHARED file mapping",
    "R/O longterm GUP-fast pin in MAP_SHARED file mapping",
    "R/W longterm GUP pin in MAP_PRIVATE file mapping",
    "R/W longterm GUP-fast pin in MAP_PRIVATE file mapping",
    "R/O longterm GUP pin in MAP_PRIVATE file mapping",
    "R/O longterm GUP-fast pin in MAP_PRIVATE file mapping",
    "io_uring fixed buffer with MAP_SHARED file mapping",
    "io_uring fixed buffer with MAP_PRIVATE file mapping",
]
BY_NAME = {c.desc: c for c in oracles.CASES}
SHARED_RW = BY_NAME["R/W longterm GUP pin in MAP_SHARED file mapping"]
SHARED_RO = BY_NAME["R/O longterm GUP pin in MAP_SHARED file mapping"]
PRIVATE_RW = BY_NAME["R/W longterm GUP-fast pin in MAP_PRIVATE file mapping"]
IOURING_SHARED = BY_NAME["io_uring fixed buffer with MAP_SHARED file mapping"]
NO_GUP = GupTest(None, "no gup_test in this control")


def test_case_names_are_upstream() -> None:
    assert [c.desc for c in oracles.CASES] == UPSTREAM_NAMES


def test_expectation_table() -> None:
    """gup_longterm.c: should_work = !shared || !rw || fs_supports_writable_longterm_pinning."""
    assert not SHARED_RW.should_work(abi.EXT4_SUPER_MAGIC)
    assert SHARED_RW.should_work(abi.TMPFS_MAGIC) and SHARED_RW.should_work(abi.HUGETLBFS_MAGIC)
    assert SHARED_RO.should_work(abi.XFS_SUPER_MAGIC)
    assert PRIVATE_RW.should_work(abi.BTRFS_SUPER_MAGIC)
    assert not IOURING_SHARED.should_work(abi.XFS_SUPER_MAGIC)
    assert SHARED_RW.unknown_fs(0x6969) and not SHARED_RO.unknown_fs(0x6969)  # NFS: unknown to upstream


def test_pin_that_should_have_failed_is_reported() -> None:
    with pytest.raises(AssertionError, match="Should have failed"):
        oracles.judge(SHARED_RW, abi.EXT4_SUPER_MAGIC, 0)
    with pytest.raises(AssertionError, match="Should have failed"):
        oracles.judge(IOURING_SHARED, abi.BTRFS_SUPER_MAGIC, 0)


def test_refusal_that_should_have_worked_is_reported() -> None:
    with pytest.raises(AssertionError, match="Should have worked"):
        oracles.judge(SHARED_RW, abi.TMPFS_MAGIC, errno.EFAULT)
    with pytest.raises(AssertionError, match="Should have worked"):
        oracles.judge(PRIVATE_RW, abi.EXT4_SUPER_MAGIC, errno.EFAULT)
    with pytest.raises(AssertionError, match="Should have worked"):
        oracles.judge(IOURING_SHARED, abi.HUGETLBFS_MAGIC, errno.EOPNOTSUPP)


def test_other_errno_is_a_failure() -> None:
    with pytest.raises(AssertionError, match="ENOMEM"):
        oracles.judge(SHARED_RW, abi.EXT4_SUPER_MAGIC, errno.ENOMEM)
    with pytest.raises(AssertionError, match="ENOSPC"):  # a refusal for io_uring, not for gup_test
        oracles.judge(SHARED_RW, abi.EXT4_SUPER_MAGIC, errno.ENOSPC)


def test_expected_outcomes_pass() -> None:
    oracles.judge(SHARED_RW, abi.EXT4_SUPER_MAGIC, errno.EFAULT)
    oracles.judge(SHARED_RW, abi.TMPFS_MAGIC, 0)
    oracles.judge(IOURING_SHARED, abi.XFS_SUPER_MAGIC, errno.ENOSPC)
    oracles.judge(PRIVATE_RW, abi.EXT4_SUPER_MAGIC, 0)


def run_case(case: oracles.PinCase, b: backings.FileBacking) -> isolation.Outcome:
    return isolation.run_isolated(lambda: do_test(case, b, NO_GUP), 30, skip_types=(pytest.skip.Exception,))


def need_iouring() -> None:
    try:
        iouring.Ring(1).close()
    except iouring.IoUringUnavailable as e:
        pytest.skip(str(e))


def test_real_case_fails_when_the_kernel_refuses_an_expected_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim that ext4 (where /tmp is here) takes R/W longterm pins: the kernel's EFAULT
    must then fail the case."""
    need_iouring()
    b = backings.FileBacking(backings.TMPFILE)
    fd = b.open()
    try:
        t = fstype.fs_type(fd)
    finally:
        os.close(fd)
    if t not in (abi.EXT4_SUPER_MAGIC, abi.XFS_SUPER_MAGIC, abi.BTRFS_SUPER_MAGIC):
        pytest.skip(f"{backings.TMPDIR} is on {fstype.name(t)}, not a file system with writeback")
    monkeypatch.setattr(fstype, "WRITABLE_LONGTERM", fstype.WRITABLE_LONGTERM | {t})
    o = run_case(IOURING_SHARED, b)
    assert o.kind == "fail" and "Should have worked" in o.message, (o.kind, o.message)


def test_real_case_fails_when_the_kernel_pins_what_should_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim that tmpfs cannot take R/W longterm pins: the kernel pinning the shared memfd
    must then fail the case."""
    need_iouring()
    monkeypatch.setattr(fstype, "WRITABLE_LONGTERM", frozenset({abi.HUGETLBFS_MAGIC}))
    o = run_case(IOURING_SHARED, backings.FileBacking(backings.MEMFD))
    assert o.kind == "fail" and "Should have failed" in o.message, (o.kind, o.message)


def test_real_cases_pass_with_the_true_expectation() -> None:
    need_iouring()
    for b in (backings.FileBacking(backings.MEMFD), backings.FileBacking(backings.TMPFILE)):
        for c in (IOURING_SHARED, BY_NAME["io_uring fixed buffer with MAP_PRIVATE file mapping"]):
            o = run_case(c, b)
            assert o.kind in ("pass", "skip"), (c.desc, b.suffix, o.kind, o.message)


def test_statfs_layout_and_memfd_types() -> None:
    assert ctypes.sizeof(abi.statfs) == 120 and abi.statfs.f_type.offset == 0 and abi.statfs.f_spare.offset == 88
    fd = os.memfd_create("kmm-control", os.MFD_CLOEXEC)
    try:
        assert fstype.fs_type(fd) == abi.TMPFS_MAGIC
    finally:
        os.close(fd)
    sizes = system.hugetlb_sizes()
    if sizes:
        fd = os.memfd_create("kmm-control", os.MFD_CLOEXEC | abi.MFD_HUGETLB | abi.huge_size_flag(sizes[0]))
        try:
            assert fstype.fs_type(fd) == abi.HUGETLBFS_MAGIC
        finally:
            os.close(fd)


def test_local_tmpfile_probe_names_a_refused_unlinked_fstatfs(tmp_path, monkeypatch) -> None:
    """The local-tmpfile probe passes where fstatfs() of an unlinked file works, and names the
    failure where it does not (a 9p share answers ENOENT) instead of letting the case fail."""
    import errno as _errno

    from cases.gup_longterm import backings as gb
    from lib.kernel import fstype as _fstype

    assert gb.unlinked_fstatfs_refused(str(tmp_path)) == ""

    def refused(fd: int) -> int:
        raise OSError(_errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(_fstype, "fs_type", refused)
    why = gb.unlinked_fstatfs_refused(str(tmp_path))
    assert "fstatfs() of an unlinked file" in why and "No such file" in why, why
    assert list(tmp_path.iterdir()) == []  # the probe file is gone either way
