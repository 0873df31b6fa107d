"""gup_longterm.c's test cases as data, its expectation, and the judgement of one pin.

Expectation (gup_longterm.c do_test): a R/O longterm pin, and any longterm pin of a
MAP_PRIVATE mapping (the R/W pin breaks COW into an anonymous page; the R/O one unshares the
pagecache page), must succeed.  A R/W longterm pin of a MAP_SHARED file mapping must succeed
only on tmpfs and hugetlbfs; on btrfs, ext4 and xfs (file systems that track dirtying for
writeback) it must fail with EFAULT (mm/gup.c check_vma_flags: FOLL_LONGTERM|FOLL_WRITE on a
VMA that needs dirty tracking).  On other file systems gup_longterm.c knows no answer: those
R/W shared cases skip ("Unknown filesystem").  io_uring fixed buffers are always pinned R/W
(FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM): the refusal shows as ENOSPC, EOPNOTSUPP or (newer
kernels) EFAULT from IORING_REGISTER_BUFFERS.

Verdicts: success where it should fail -> "Should have failed"; the refusal where it should
work -> "Should have worked"; any other errno -> failure (gup_longterm.c: "PIN_LONGTERM_TEST_START
failed"), except PIN_LONGTERM_TEST_START's EINVAL, a skip as upstream (the gup_test driver
refusing the request, e.g. a kernel without PIN_LONGTERM_TEST_FLAG_USE_WRITE).  Skips otherwise
come from probes: gup_test present (CONFIG_GUP_TEST), the file system type (fstatfs), io_uring
usable (io_uring_setup, kernel.io_uring_disabled), RLIMIT_MEMLOCK without CAP_IPC_LOCK.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from lib import check
from lib.kernel import fstype

GUP = "gup"
IOURING = "io_uring"
GUP_REFUSED = (errno.EFAULT,)
IOURING_REFUSED = (errno.ENOSPC, errno.EOPNOTSUPP, errno.EFAULT)  # "Only new kernels return EFAULT."


@dataclass(frozen=True)
class PinCase:
    desc: str
    via: str  # GUP | IOURING
    shared: bool
    rw: bool
    fast: bool = False

    def __str__(self) -> str:
        return self.desc

    @property
    def refused(self) -> tuple[int, ...]:
        """The errnos gup_longterm.c reads as "the kernel refused the longterm pin"."""
        return GUP_REFUSED if self.via == GUP else IOURING_REFUSED

    @property
    def what(self) -> str:
        if self.via == IOURING:
            return "io_uring_register(IORING_REGISTER_BUFFERS)"
        return (f"{'R/W' if self.rw else 'R/O'} PIN_LONGTERM_TEST_START"
                f"{' (GUP-fast)' if self.fast else ''}")

    def unknown_fs(self, f_type: int) -> bool:
        """gup_longterm.c skips a R/W pin of a MAP_SHARED mapping on a file system it does
        not know ("Unknown filesystem")."""
        return self.rw and self.shared and not fstype.known(f_type)

    def should_work(self, f_type: int) -> bool:
        """R/O pins and pins of private mappings always; R/W pins of shared file mappings
        only where the file system supports writable longterm pinning (tmpfs, hugetlbfs)."""
        return not self.shared or not self.rw or fstype.writable_longterm(f_type)


def _cases() -> list[PinCase]:
    out = []
    for shared in (True, False):
        mapping = "MAP_SHARED" if shared else "MAP_PRIVATE"
        for rw in (True, False):
            for fast in (False, True):
                desc = f"{'R/W' if rw else 'R/O'} longterm GUP{'-fast' if fast else ''} pin in {mapping} file mapping"
                out.append(PinCase(desc, GUP, shared, rw, fast))
    out += [PinCase("io_uring fixed buffer with MAP_SHARED file mapping", IOURING, True, True),
            PinCase("io_uring fixed buffer with MAP_PRIVATE file mapping", IOURING, False, True)]
    return out


CASES = _cases()  # gup_longterm.c test_cases[], in its order


def judge(case: PinCase, f_type: int, err: int) -> None:
    """The verdict of one pin attempt: ``err`` 0 (pinned) or the errno it failed with."""
    should = case.should_work(f_type)
    where = f"{'MAP_SHARED' if case.shared else 'MAP_PRIVATE'} mapping of a file on {fstype.name(f_type)}"
    if err == 0:
        if not should:
            raise AssertionError(f"Should have failed: {case.what} succeeded on a {where} "
                                 f"({fstype.name(f_type)} cannot take R/W longterm pins of shared mappings)")
        return
    if err in case.refused:
        if should:
            raise AssertionError(f"Should have worked: {case.what} failed with {check.errname(err)} on a {where}")
        return
    raise AssertionError(f"{case.what} failed ({check.errname(err)}) on a {where}: neither success nor "
                         f"the refusal gup_longterm.c expects ({', '.join(check.errname(e) for e in case.refused)})")
