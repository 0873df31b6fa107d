"""Every userfaultfd operation x every memory type it accepts x every documented outcome.

The cases are the rows of cases/uffd_ops/matrix.py (one table: operation, variant, outcome,
memory kinds, expected result, where it is documented) crossed with the memory types of
lib.kernel.memtypes; each row names the scenario below that checks it.  A case's name says all:
``UFFDIO_COPY MODE_WP on shmem: maps the page write-protected; the next write raises a WP fault``.

How a case observes (oracles in cases/uffd_ops/oracles.py): errno and the kernel-written result
field of the ioctl; the content a user-mode access reads; pagemap bits (PM_PRESENT, PM_UFFD_WP,
PM_FILE); which userfault message the next access raises (an access is made by a thread of
ours through lib.kernel.libc's GIL-releasing primitives: docs/ARCHITECTURE.md rule 1; the case
itself reads the message and answers it with the operation under test, so no handler of
lib.kernel.handler stands between them; the thread is lib.kernel.toucher.Toucher); and the
signal a child process's access dies of.  Every wait has a deadline; a blocked thread is
recognised by its state and wchan.  A privilege check is met by a forked child that dropped
CAP_SYS_PTRACE from every capability set (lib.kernel.caps.drop); the privileged side runs in the
case's own process, which has it as root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import cast

import pytest

from cases.uffd_ops import matrix, oracles
from lib import check
from lib.check import CannotTest
from lib.kernel import abi, caps, iouring, libc, memory, memtypes, system
from lib.kernel.memtypes import MemType
from lib.kernel.pagemap import Pagemap, kpageflags
from lib.kernel.tasks import ChildResult, Pipe, fork_call, reap, run_in_child, task_state, task_wchan
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import UffdError, Userfaultfd, open_for, probe

PAGE = system.PAGE_SIZE
WAIT = 10.0  # seconds any single wait may take
# every anon THP size the kernel offers (PMD and mTHP); none offered: the PMD size, whose cells
# then skip on the THP probe
THP_SIZES = sorted(set(system.thp_sizes()) or {2 * system.MiB})


# ---------------------------------------------------------------------------------------
# the matrix


def mem_types_of(row: matrix.Row, hugetlb_sizes: list[int], default: int) -> list[MemType | None]:
    """The row's kinds at every size: anon-thp at every THP size, hugetlb kinds at the default size
    and, as the row's ``big`` says, at the other hugetlb sizes (``hugetlb_sizes``, default first)."""
    if not row.kinds:
        return [None]
    return [mt for mt in memtypes.mem_types(row.kinds, hugetlb_sizes=hugetlb_sizes, thp_sizes=THP_SIZES)
            if not mt.hugetlb or mt.size == default or mt.kind in matrix.BIG_KINDS[row.big]]


def cells() -> list:
    # the sizes once for the whole table (each is a read of /proc/meminfo), not once per row
    hugetlb_sizes, default = memtypes.hugetlb_sizes_default_first(), system.default_hugetlb_size()
    out = []
    for row in matrix.ROWS:
        for mt in mem_types_of(row, hugetlb_sizes, default):
            out.append(pytest.param(row, mt or MemType(memtypes.ANON), id=row.case_name(mt.name if mt else None)))
    return out


def expected_ioctls(mt: MemType, mode: int) -> int:
    """What UFFDIO_REGISTER reports for a range (fs/userfaultfd.c userfaultfd_register():
    UFFD_API_RANGE_IOCTLS, _BASIC for hugetlb; CONTINUE only with MODE_MINOR, WRITEPROTECT only
    with MODE_WP)."""
    bits = [abi.IoctlBit.WAKE, abi.IoctlBit.COPY, abi.IoctlBit.POISON]
    if not mt.hugetlb:
        bits += [abi.IoctlBit.ZEROPAGE, abi.IoctlBit.MOVE]
    if mode & matrix.WP:
        bits.append(abi.IoctlBit.WRITEPROTECT)
    if mode & matrix.MINOR:
        bits.append(abi.IoctlBit.CONTINUE)
    return abi.ioctl_mask(*bits)


# ---------------------------------------------------------------------------------------
# accesses: a thread of ours touches registered memory through libc (rule 1)


def _read_samples(addr: int, page_size: int) -> tuple[bytes, bytes]:
    return libc.read(addr, oracles.SAMPLE), libc.read(addr + page_size - oracles.SAMPLE, oracles.SAMPLE)


def _where(t: Toucher) -> str:
    state = task_state(t.tid)  # '' once the thread is gone (task_state and task_wchan never raise)
    if not state:
        return f"thread {t.tid} gone"
    return f"thread {t.tid} state {state} wchan {task_wchan(t.tid)}"


class Ctx:
    """One case: the memory of its type (``region``, ``row.pages`` pages), an open uffd with the
    row's registration, the pagemap, and the accesses still blocked (woken at the end)."""

    def __init__(self, row: matrix.Row, mt: MemType) -> None:
        self.row, self.mt = row, mt
        self.ps = mt.page_size
        self.features = matrix.features_of(row, mt)
        mt.require(self.features, pages=row.pages)
        self.stack = contextlib.ExitStack()
        self.region = mt.map(row.pages)
        self.stack.callback(self.region.close)
        self.u = open_for(self.features)
        self.stack.callback(self.u.close)
        self.pm = Pagemap()
        self.stack.callback(self.pm.close)
        self.pending: list[Toucher] = []
        self.registered = 0
        if row.mode:
            self.register(row.mode)

    @property
    def addr(self) -> int:
        return self.region.addr

    def register(self, mode: int, length: int | None = None) -> int:
        ioctls = self.u.register(self.addr, length or self.region.size, mode)
        self.registered = mode
        return ioctls

    def unregister(self) -> None:
        self.u.unregister(self.addr, self.region.size)
        self.registered = 0

    def close(self) -> None:
        """Unregister (wakes every blocked access), let the accesses finish, then unmap; an
        access still blocked keeps its memory mapped (the case's process ends anyway)."""
        with contextlib.suppress(OSError):
            self.u.unregister(self.addr, self.region.size)
        with contextlib.suppress(OSError):  # UNREGISTER wakes MISSING faults only
            self.u.wake(self.addr, self.region.size)
        stuck = [t for t in self.pending if not t.wait(WAIT)]
        if stuck:
            self.stack.pop_all()
            return
        for t in self.pending:
            t.close()
        self.stack.close()

    # -- memory helpers --------------------------------------------------------------------
    def source(self, npages: int, byte: int, page_size: int | None = None, populate: bool = False) -> int:
        """Private anon memory of ``npages`` pages, page i filled as expected_page(byte + i)."""
        ps = page_size or self.ps
        if populate and ps >= system.GiB:
            # populated: UFFDIO_COPY then copies under the page table lock; an unpopulated source
            # makes hugetlb allocate a temporary huge page beyond the mapping's reservation
            r = memory.thp(npages * ps, system.pmd_size() or 2 * system.MiB)
            libc.madvise(r.addr, r.size, abi.Madv.POPULATE_WRITE)
        else:
            r = memory.anon(npages * ps)
        self.stack.callback(r.close)
        for i in range(npages):
            fill_sample(r.addr + i * ps, ps, byte + i)
        return r.addr

    def hole(self, size: int | None = None) -> int:
        """An address range with nothing mapped (mapped, then unmapped)."""
        n = size or self.ps
        a = libc.mmap(n, abi.PROT_NONE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_NORESERVE)
        libc.munmap(a, n)
        return a

    def populate(self, byte: int) -> None:
        """Fault the region in through an ordinary fault (unregistered meanwhile): anon-thp gets
        its THP, hugetlb its huge page; then register again as before."""
        mode = self.registered
        if mode:
            self.unregister()
        if self.mt.thp:
            libc.fill(self.addr, byte, self.region.size)
        else:
            for i in range(self.region.npages):
                fill_sample(self.region.page(i), self.ps, byte)
        if mode:
            self.register(mode)
        if self.mt.thp:
            check.diag(f"{self.mt}: populated as {folio_desc(self.pm, self.addr)}")

    def cache_page(self, byte: int, i: int = 0) -> None:
        """Put page ``i`` into the page cache through a MAP_SHARED alias that is not registered."""
        alias = self.region.alias()
        self.stack.callback(alias.close)
        fill_sample(alias.page(i), self.ps, byte)

    def file_head(self, offset: int = 0) -> bytes:
        return os.pread(self.region.fd, oracles.SAMPLE, offset)

    # -- accesses --------------------------------------------------------------------------
    def access(self, addr: int, write: bool = False, byte: int = 0x77) -> oracles.Access:
        """Make one access and report whether it completed or raised a userfault message (the
        access then stays blocked in ``pending`` until the case resolves it)."""
        t = Toucher("access", pollable=True)
        self.pending.append(t)
        ps = self.ps
        t.submit((lambda: libc.fill(addr, byte, 1)) if write else (lambda: _read_samples(addr, ps)))
        p = select.poll()
        p.register(t.done_fd, select.POLLIN)
        p.register(self.u.fd, select.POLLIN)
        ready = {fd for fd, _ in p.poll(int(WAIT * 1000))}
        if t.done_fd in ready:
            return self.finished(t, write)
        if self.u.fd in ready:
            msgs = self.u.read_msgs(1)
            if msgs:
                return oracles.Access(write, msgs[0], toucher=t)
        raise AssertionError(f"the {'write' if write else 'read'} at {addr:#x} neither completed nor raised a "
                             f"userfault within {WAIT}s ({_where(t)})")

    def finished(self, t: Toucher, write: bool) -> oracles.Access:
        """The access ended: its data (a read's samples), or a failure naming its exception."""
        try:
            data = t.join(WAIT)
        except (AssertionError, CannotTest):
            raise
        except Exception as e:
            raise AssertionError(f"the access failed: {e!r}") from None
        return oracles.Access(write, None, None if write else cast("tuple[bytes, bytes]", data))

    def finish(self, a: oracles.Access) -> oracles.Access:
        """The blocked access of ``a`` must now complete (lib.kernel.toucher.Toucher.join: a
        thread still sleeping fails naming its wchan, a starved one cannot test)."""
        t = a.toucher
        assert isinstance(t, Toucher)
        return self.finished(t, a.write)

    def still_blocked(self, a: oracles.Access, what: str) -> None:
        t = a.toucher
        assert isinstance(t, Toucher)
        oracles.expect_asleep(t.tid, t.done, what, WAIT)
        check.false(t.done(), f"{what}: the faulting thread completed")

    def entry(self, addr: int | None = None):
        return self.pm.entry(self.addr if addr is None else addr)


def fill_sample(addr: int, page_size: int, byte: int) -> None:
    """Write ``byte`` into the head and the tail samples of the page at ``addr``."""
    libc.fill(addr, byte, oracles.SAMPLE)
    libc.fill(addr + page_size - oracles.SAMPLE, byte, oracles.SAMPLE)


def want(byte: int) -> tuple[bytes, bytes]:
    """The head and tail samples of a page filled as oracles.expected_page(byte), without
    building the page (a gigantic one is 1 GiB: seconds and GiBs a case)."""
    return bytes([byte]) * oracles.SAMPLE, bytes([byte]) * oracles.SAMPLE


def folio_desc(pm: Pagemap, addr: int) -> str:
    e = pm.entry(addr)
    if not e.present or not e.pfn:
        return f"pagemap {e}"
    try:
        flags = kpageflags(e.pfn)
    except OSError:
        return "a present page (kpageflags unreadable)"
    return "a THP" if flags & abi.KPF.THP else "base pages"


def raw_ioctl(u: Userfaultfd, request: int, arg: ctypes.Structure, name: str) -> None:
    libc.ioctl(u.fd, request, arg, name=name)


# ---------------------------------------------------------------------------------------
# scenarios: one per row of the matrix (its ``scenario`` field)

SCENARIOS: dict[str, Callable[[Ctx], None]] = {}


def scenario(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


def expect_completed_write(c: Ctx, addr: int, what: str) -> None:
    oracles.expect_access(c.access(addr, write=True), None, what)


# -- UFFDIO_API ------------------------------------------------------------------------------
def _fresh() -> Userfaultfd:
    return open_for(0, handshake=False)


@scenario
def api_handshake(c: Ctx) -> None:
    with _fresh() as u:
        a = u.api(0)
        check.eq(a.api, abi.UFFD_API, "uffdio_api.api")
        check.eq(a.ioctls, abi.UFFD_API_IOCTLS, "uffdio_api.ioctls (API, REGISTER, UNREGISTER)")
        check.true(a.features, "uffdio_api.features reports what the kernel supports")


@scenario
def api_bad_version(c: Ctx) -> None:
    with _fresh() as u:
        a = abi.uffdio_api(api=0xAB, features=0, ioctls=0x1234)
        with check.raises_errno(errno.EINVAL, "UFFDIO_API with api 0xAB"):
            raw_ioctl(u, abi.UFFDIO_API, a, "UFFDIO_API")
        check.eq((a.api, a.features, a.ioctls), (0, 0, 0), "uffdio_api after the failure (zeroed)")


@scenario
def api_unknown_feature(c: Ctx) -> None:
    with _fresh() as u:
        oracles.expect_errno(lambda: u.api(1 << 62), "EINVAL", "UFFDIO_API with feature bit 62", result=False)


@scenario
def api_twice(c: Ctx) -> None:
    with _fresh() as u:
        u.api(0)
        oracles.expect_errno(lambda: u.api(0), "EINVAL", "the second UFFDIO_API", result=False)


@scenario
def api_missing(c: Ctx) -> None:
    with _fresh() as u:
        oracles.expect_errno(lambda: u.register(c.addr, c.ps), "EINVAL", "UFFDIO_REGISTER before UFFDIO_API",
                       result=False)


# -- privilege checks: UFFDIO_API EVENT_FORK, userfaultfd(2), /dev/userfaultfd ---------------------
def without_ptrace(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a forked child that dropped CAP_SYS_PTRACE from its effective, permitted and
    inheritable sets (capset(2)): capable(CAP_SYS_PTRACE) is false there as for an unprivileged
    process.  Its failure is the case's (lib.kernel.tasks.run_in_child)."""

    def child() -> None:
        caps.drop(caps.CAP_SYS_PTRACE)
        if caps.has(caps.CAP_SYS_PTRACE):
            raise AssertionError("setup step failed: CAP_SYS_PTRACE still effective after capset(2)")
        fn()

    run_in_child(child, WAIT)


def with_ptrace() -> None:
    """The privileged side runs in the case's process: skip unless it has CAP_SYS_PTRACE (probe)."""
    if not caps.has(caps.CAP_SYS_PTRACE):
        pytest.skip("needs CAP_SYS_PTRACE (the privileged side of the check)")


def expect_sysctls(c: Ctx) -> None:
    """The row's sysctls hold (set by its prepare hook before the case)."""
    for path, value in c.row.sysctl:
        check.eq(system.Settings.read(path), value, f"setup step: {path}")


def open_and_handshake(what: str, **open_kw) -> None:
    """Open a uffd (lib.kernel.uffd.Userfaultfd.open arguments) and handshake: both must succeed."""
    try:
        u = Userfaultfd.open(**open_kw)
    except OSError as e:
        raise AssertionError(f"{what}: expected success, got {check.strerror(e.errno or 0)}") from None
    with u:
        check.eq(u.api(0).api, abi.UFFD_API, f"{what}: the handshake's uffdio_api.api")


@scenario
def api_fork_unprivileged(c: Ctx) -> None:
    if not probe().features & abi.Feature.EVENT_FORK:
        pytest.skip("UFFD_FEATURE_EVENT_FORK not offered by this kernel")

    def attempt() -> None:
        with Userfaultfd.open(user_mode_only=True) as u:  # always allowed: the check is UFFDIO_API's
            a = abi.uffdio_api(api=abi.UFFD_API, features=int(abi.Feature.EVENT_FORK), ioctls=0x1234)
            oracles.expect_errno(lambda: raw_ioctl(u, abi.UFFDIO_API, a, "UFFDIO_API"), "EPERM",
                                 "UFFDIO_API with EVENT_FORK without CAP_SYS_PTRACE", result=False)
            check.eq((a.api, a.features, a.ioctls), (0, 0, 0), "uffdio_api after the failure (zeroed)")
            check.eq(u.api(0).api, abi.UFFD_API, "a handshake without EVENT_FORK after the failure")

    without_ptrace(attempt)


@scenario
def api_fork_privileged(c: Ctx) -> None:
    with_ptrace()
    with _fresh() as u:
        a = u.api(int(abi.Feature.EVENT_FORK))
        check.true(a.features & abi.Feature.EVENT_FORK, "uffdio_api.features reports EVENT_FORK")
        check.eq(a.ioctls, abi.UFFD_API_IOCTLS, "uffdio_api.ioctls")


@scenario
def open_kernel_faults_unprivileged(c: Ctx) -> None:
    expect_sysctls(c)
    without_ptrace(lambda: oracles.expect_errno(lambda: Userfaultfd.open(via="syscall").close(), "EPERM",
                                                "userfaultfd(2) without UFFD_USER_MODE_ONLY", result=False))


@scenario
def open_kernel_faults_sysctl(c: Ctx) -> None:
    expect_sysctls(c)
    without_ptrace(lambda: open_and_handshake("userfaultfd(2) without UFFD_USER_MODE_ONLY", via="syscall"))


@scenario
def open_kernel_faults_privileged(c: Ctx) -> None:
    expect_sysctls(c)
    with_ptrace()
    open_and_handshake("userfaultfd(2) without UFFD_USER_MODE_ONLY", via="syscall")


@scenario
def open_user_mode_only_unprivileged(c: Ctx) -> None:
    expect_sysctls(c)
    without_ptrace(lambda: open_and_handshake("userfaultfd(2) with UFFD_USER_MODE_ONLY", via="syscall",
                                              user_mode_only=True))


@scenario
def open_dev_unprivileged(c: Ctx) -> None:
    if not os.path.exists("/dev/userfaultfd"):
        pytest.skip("no /dev/userfaultfd (CONFIG_USERFAULTFD without the misc device, before 6.1)")
    expect_sysctls(c)
    without_ptrace(lambda: open_and_handshake("/dev/userfaultfd USERFAULTFD_IOC_NEW", via="dev"))


# -- UFFDIO_REGISTER -------------------------------------------------------------------------
@scenario
def register_missing(c: Ctx) -> None:
    check.eq(c.register(matrix.MISSING), expected_ioctls(c.mt, matrix.MISSING), "UFFDIO_REGISTER ioctls")
    oracles.expect_access(c.access(c.addr), "missing", "a read of a hole")


@scenario
def register_wp(c: Ctx) -> None:
    c.populate(0x31)
    check.eq(c.register(matrix.WP), expected_ioctls(c.mt, matrix.WP), "UFFDIO_REGISTER ioctls")
    c.u.writeprotect(c.addr, c.region.size, True)
    oracles.expect_access(c.access(c.addr, write=True), "wp", "a write to the protected page")


@scenario
def register_minor(c: Ctx) -> None:
    c.cache_page(0x32)
    check.eq(c.register(matrix.MINOR), expected_ioctls(c.mt, matrix.MINOR), "UFFDIO_REGISTER ioctls")
    oracles.expect_access(c.access(c.addr), "minor", "a read of a page in the page cache")


@scenario
def register_minor_anon(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.register(matrix.MINOR), "EINVAL", "UFFDIO_REGISTER MODE_MINOR", result=False)


@scenario
def register_mode_zero(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.register(0), "EINVAL", "UFFDIO_REGISTER mode 0", result=False)


@scenario
def register_mode_unknown(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.register(1 << 3), "EINVAL", "UFFDIO_REGISTER mode 8", result=False)


@scenario
def register_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.register(c.addr + 1, c.ps), "EINVAL", "UFFDIO_REGISTER at addr+1", result=False)


@scenario
def register_zero_len(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.register(c.addr, 0), "EINVAL", "UFFDIO_REGISTER of length 0", result=False)


@scenario
def register_no_vma(c: Ctx) -> None:
    h = c.hole()
    oracles.expect_errno(lambda: c.u.register(h, c.ps), "EINVAL", "UFFDIO_REGISTER of an unmapped range",
                   result=False)


@scenario
def register_across_hole(c: Ctx) -> None:
    a = libc.mmap(3 * PAGE, memory.PROT_RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    c.stack.callback(lambda: libc.munmap(a, 3 * PAGE))
    libc.munmap(a + PAGE, PAGE)
    copy_bit = abi.ioctl_mask(abi.IoctlBit.COPY)
    check.eq(c.u.register(a, 3 * PAGE, matrix.MISSING) & copy_bit, copy_bit,
             "UFFDIO_REGISTER across a hole: the ioctls include COPY")
    src = c.source(1, 0xB1, PAGE)
    for page in (a, a + 2 * PAGE):  # both VMAs are registered: COPY works on each
        check.eq(c.u.copy(page, src, PAGE), PAGE, f"UFFDIO_COPY into {page - a:#x} of the range")
    c.u.unregister(a, 3 * PAGE)


@scenario
def register_huge_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.register(c.addr, PAGE), "EINVAL", "UFFDIO_REGISTER of one base page",
                   result=False)


@scenario
def register_busy(c: Ctx) -> None:
    c.register(matrix.MISSING)
    with open_for(c.features) as u2:
        oracles.expect_errno(lambda: u2.register(c.addr, c.ps), "EBUSY", "UFFDIO_REGISTER through a second uffd",
                       result=False)


@scenario
def register_readonly(c: Ctx) -> None:
    fd = os.open(f"/proc/self/fd/{c.region.fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ro = libc.mmap(c.ps, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    try:
        oracles.expect_errno(lambda: c.u.register(ro, c.ps, matrix.MISSING), "EPERM",
                       "UFFDIO_REGISTER of a read-only shared file mapping", result=False)
    finally:
        libc.munmap(ro, c.ps)


# -- UFFDIO_UNREGISTER -----------------------------------------------------------------------
@scenario
def unregister_missing(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    c.unregister()
    done = c.finish(a)
    oracles.expect_content(done.data, want(0), "the woken read (an ordinary fault: zeroes)")
    oracles.expect_access(c.access(c.addr), None, "a later read")


@scenario
def unregister_wp_blocked(c: Ctx) -> None:
    c.populate(0x42)
    c.u.writeprotect(c.addr, c.ps, True)
    w = c.access(c.addr, write=True)
    oracles.expect_access(w, "wp", "a write to the protected page")
    c.unregister()
    oracles.expect_pagemap(c.entry(), "after UFFDIO_UNREGISTER", present=True, uffd_wp=False)
    c.still_blocked(w, "after UFFDIO_UNREGISTER")
    c.u.wake(c.addr, c.ps)
    c.finish(w)


@scenario
def unregister_wp(c: Ctx) -> None:
    c.populate(0x41)
    c.u.writeprotect(c.addr, c.region.size, True)
    oracles.expect_pagemap(c.entry(), "after UFFDIO_WRITEPROTECT", present=True, uffd_wp=True)
    c.unregister()
    oracles.expect_pagemap(c.entry(), "after UFFDIO_UNREGISTER", present=True, uffd_wp=False)
    expect_completed_write(c, c.addr, "a write after UFFDIO_UNREGISTER")


@scenario
def unregister_other(c: Ctx) -> None:
    with open_for(0) as u2:
        oracles.expect_errno(lambda: u2.unregister(c.addr, c.ps), "EINVAL", "UFFDIO_UNREGISTER through another uffd",
                       result=False)


@scenario
def unregister_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.unregister(c.addr + 1, c.ps), "EINVAL", "UFFDIO_UNREGISTER at addr+1",
                   result=False)


@scenario
def unregister_huge_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.unregister(c.addr, PAGE), "EINVAL", "UFFDIO_UNREGISTER of one base page",
                   result=False)


# -- UFFDIO_COPY -----------------------------------------------------------------------------
@scenario
def copy_plain(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    src = c.source(1, 0xC1)
    check.eq(c.u.copy(c.addr, src, c.ps), c.ps, "uffdio_copy.copy")
    oracles.expect_content(c.finish(a).data, want(0xC1), "the woken read")
    oracles.expect_pagemap(c.entry(), "the copied page", present=True, uffd_wp=False, file=c.mt.map_shared)
    if c.mt.file_backed:  # shared: the page is in the file; private: an anonymous copy, the file keeps its hole
        check.eq(c.file_head(), bytes([0xC1 if c.mt.map_shared else 0]) * oracles.SAMPLE, "the file's content")
    expect_completed_write(c, c.addr, "a write to the copied page")


@scenario
def copy_wp(c: Ctx) -> None:
    src = c.source(1, 0xC2)
    check.eq(c.u.copy(c.addr, src, c.ps, int(abi.CopyMode.WP)), c.ps, "uffdio_copy.copy")
    oracles.expect_pagemap(c.entry(), "the page copied with MODE_WP", present=True, uffd_wp=True)
    r = c.access(c.addr)
    oracles.expect_access(r, None, "a read")
    oracles.expect_content(r.data, want(0xC2), "the read")
    w = c.access(c.addr, write=True)
    oracles.expect_access(w, "wp", "a write")
    c.u.writeprotect(c.addr, c.ps, False)
    c.finish(w)
    oracles.expect_pagemap(c.entry(), "after unprotecting", present=True, uffd_wp=False)


@scenario
def copy_dontwake(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    src = c.source(1, 0xC3)
    check.eq(c.u.copy(c.addr, src, c.ps, int(abi.CopyMode.DONTWAKE)), c.ps, "uffdio_copy.copy")
    oracles.expect_pagemap(c.entry(), "the copied page", present=True)
    c.still_blocked(a, "after COPY MODE_DONTWAKE")
    c.u.wake(c.addr, c.ps)
    oracles.expect_content(c.finish(a).data, want(0xC3), "the read woken by UFFDIO_WAKE")


@scenario
def copy_eexist(c: Ctx) -> None:
    c.populate(0x21)
    src = c.source(1, 0xC4)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, c.ps), "EEXIST", "UFFDIO_COPY onto a mapped page")
    oracles.expect_content(c.access(c.addr).data, want(0x21), "the page keeps its content")


@scenario
def copy_partial(c: Ctx) -> None:
    src = c.source(2, 0xC5, populate=True)
    check.eq(c.u.copy(c.region.page(1), src + c.ps, c.ps), c.ps, "UFFDIO_COPY of page 1")
    with check.raises_errno(errno.EAGAIN, "UFFDIO_COPY of pages 0-1 with page 1 mapped") as e:
        c.u.copy(c.addr, src, 2 * c.ps)
    check.eq(e[0].result, c.ps, "uffdio_copy.copy: the bytes copied before the mapped page")
    oracles.expect_content(c.access(c.addr).data, want(0xC5), "page 0")


@scenario
def copy_unregistered(c: Ctx) -> None:
    src = c.source(1, 0xC6)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, c.ps), "ENOENT", "UFFDIO_COPY into an unregistered range")


@scenario
def copy_cross_vma(c: Ctx) -> None:
    c.unregister()
    c.register(matrix.MISSING, c.ps)  # page 0 only: its VMA ends at page 1
    src = c.source(2, 0xC7)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, 2 * c.ps), "ENOENT", "UFFDIO_COPY across the VMA's end")


@scenario
def copy_bad_src(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.copy(c.addr, c.hole(), c.ps), "EFAULT", "UFFDIO_COPY from an unmapped source")


@scenario
def copy_past_eof(c: Ctx) -> None:
    src = c.source(1, 0xC8)
    os.ftruncate(c.region.fd, 0)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, c.ps), "EFAULT", "UFFDIO_COPY beyond the file's end")


@scenario
def copy_past_eof_private(c: Ctx) -> None:
    src = c.source(1, 0xC8)
    os.ftruncate(c.region.fd, 0)
    check.eq(c.u.copy(c.addr, src, c.ps), c.ps, "uffdio_copy.copy beyond the file's end")
    oracles.expect_pagemap(c.entry(), "the copied page", present=True, file=False)


def _esrch_child(c: Ctx, sock: socket.socket) -> int:
    r = c.mt.map(1)
    u = open_for(c.features)
    u.register(r.addr, r.size, matrix.MISSING)
    socket.send_fds(sock, [r.addr.to_bytes(8, "little")], [u.fd])
    return 0


@scenario
def copy_esrch(c: Ctx) -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent, child:
        pid = fork_call(lambda: _esrch_child(c, child))
        msg, fds, _, _ = socket.recv_fds(parent, 8, 1)
        res = reap(pid, WAIT)
        oracles.expect_signal(res, None, "the registering child")
        check.eq(len(fds), 1, "the child's uffd received")
        with Userfaultfd(fds[0]) as u:
            src = c.source(1, 0xC9)
            dst = int.from_bytes(msg, "little")
            oracles.expect_errno(lambda: u.copy(dst, src, c.ps), "ESRCH", "UFFDIO_COPY after the process exited",
                           result=False)


@scenario
def copy_wp_unregistered(c: Ctx) -> None:
    src = c.source(1, 0xCA)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, c.ps, int(abi.CopyMode.WP)), "EINVAL",
                   "UFFDIO_COPY MODE_WP into a range registered MISSING only")


@scenario
def copy_bad_mode(c: Ctx) -> None:
    src = c.source(1, 0xCB)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, c.ps, 1 << 2), "EINVAL", "UFFDIO_COPY mode 4", result=False)


@scenario
def copy_unaligned(c: Ctx) -> None:
    src = c.source(1, 0xCC)
    oracles.expect_errno(lambda: c.u.copy(c.addr + 1, src, c.ps), "EINVAL", "UFFDIO_COPY to addr+1", result=False)


@scenario
def copy_zero_len(c: Ctx) -> None:
    src = c.source(1, 0xCD)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, 0), "EINVAL", "UFFDIO_COPY of length 0", result=False)


@scenario
def copy_huge_unaligned(c: Ctx) -> None:
    src = c.source(1, 0xCE, PAGE)
    oracles.expect_errno(lambda: c.u.copy(c.addr, src, PAGE), "EINVAL", "UFFDIO_COPY of one base page")


# -- UFFDIO_ZEROPAGE -------------------------------------------------------------------------
@scenario
def zeropage_plain(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    check.eq(c.u.zeropage(c.addr, c.ps), c.ps, "uffdio_zeropage.zeropage")
    oracles.expect_content(c.finish(a).data, want(0), "the woken read")
    oracles.expect_pagemap(c.entry(), "the zero-filled page", present=True, uffd_wp=False)
    expect_completed_write(c, c.addr, "a write to the zero-filled page")


@scenario
def zeropage_dontwake(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    check.eq(c.u.zeropage(c.addr, c.ps, abi.ZEROPAGE_MODE_DONTWAKE), c.ps, "uffdio_zeropage.zeropage")
    oracles.expect_pagemap(c.entry(), "the zero-filled page", present=True)
    c.still_blocked(a, "after ZEROPAGE MODE_DONTWAKE")
    c.u.wake(c.addr, c.ps)
    oracles.expect_content(c.finish(a).data, want(0), "the read woken by UFFDIO_WAKE")


@scenario
def zeropage_hugetlb(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.zeropage(c.addr, c.ps), "EINVAL", "UFFDIO_ZEROPAGE on hugetlb")


@scenario
def zeropage_eexist(c: Ctx) -> None:
    c.populate(0x22)
    oracles.expect_errno(lambda: c.u.zeropage(c.addr, c.ps), "EEXIST", "UFFDIO_ZEROPAGE onto a mapped page")
    oracles.expect_content(c.access(c.addr).data, want(0x22), "the page keeps its content")


@scenario
def zeropage_bad_mode(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.zeropage(c.addr, c.ps, 1 << 1), "EINVAL", "UFFDIO_ZEROPAGE mode 2", result=False)


@scenario
def zeropage_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.zeropage(c.addr + 1, c.ps), "EINVAL", "UFFDIO_ZEROPAGE at addr+1", result=False)


# -- UFFDIO_WRITEPROTECT ---------------------------------------------------------------------
@scenario
def wp_protect(c: Ctx) -> None:
    c.populate(0x51)
    c.u.writeprotect(c.addr, c.region.size, True)
    oracles.expect_pagemap(c.entry(), "the protected page", present=True, uffd_wp=True)
    r = c.access(c.addr)
    oracles.expect_access(r, None, "a read of the protected page")
    oracles.expect_content(r.data, want(0x51), "the read")
    w = c.access(c.addr, write=True, byte=0x52)
    oracles.expect_access(w, "wp", "a write to the protected page")
    c.u.writeprotect(c.addr, c.region.size, False)
    c.finish(w)
    oracles.expect_pagemap(c.entry(), "after mode 0", present=True, uffd_wp=False)
    check.eq(c.access(c.addr).data[0][:2], bytes([0x52, 0x51]), "the write landed after the resolution")


@scenario
def wp_marker(c: Ctx) -> None:
    c.u.writeprotect(c.addr, c.ps, True)
    oracles.expect_pagemap(c.entry(), "the protected hole", present=False, uffd_wp=True)


@scenario
def wp_anon_hole(c: Ctx) -> None:
    c.u.writeprotect(c.addr, c.ps, True)
    oracles.expect_pagemap(c.entry(), "the protected anonymous hole", present=False, uffd_wp=False)


@scenario
def wp_anon_unpopulated(c: Ctx) -> None:
    c.u.writeprotect(c.addr, c.ps, True)
    oracles.expect_pagemap(c.entry(), "the protected anonymous hole", present=False, uffd_wp=True)


@scenario
def wp_dontwake(c: Ctx) -> None:
    c.populate(0x53)
    c.u.writeprotect(c.addr, c.ps, True)
    w = c.access(c.addr, write=True)
    oracles.expect_access(w, "wp", "a write to the protected page")
    c.u.writeprotect(c.addr, c.ps, False, dontwake=True)
    oracles.expect_pagemap(c.entry(), "after mode DONTWAKE", present=True, uffd_wp=False)
    c.still_blocked(w, "after unprotecting with DONTWAKE")
    c.u.wake(c.addr, c.ps)
    c.finish(w)


@scenario
def wp_unregistered(c: Ctx) -> None:
    c.populate(0x54)
    oracles.expect_errno(lambda: c.u.writeprotect(c.addr, c.ps, True), "ENOENT",
                   "UFFDIO_WRITEPROTECT of a range registered MISSING only", result=False)


@scenario
def wp_wp_dontwake(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.writeprotect(c.addr, c.ps, True, dontwake=True), "EINVAL",
                   "UFFDIO_WRITEPROTECT mode WP|DONTWAKE", result=False)


@scenario
def wp_bad_mode(c: Ctx) -> None:
    arg = abi.uffdio_writeprotect(abi.uffdio_range(c.addr, c.ps), 1 << 2)
    oracles.expect_errno(lambda: raw_ioctl(c.u, abi.UFFDIO_WRITEPROTECT, arg, "UFFDIO_WRITEPROTECT"), "EINVAL",
                   "UFFDIO_WRITEPROTECT mode 4", result=False)


@scenario
def wp_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.writeprotect(c.addr + 1, c.ps, True), "EINVAL", "UFFDIO_WRITEPROTECT at addr+1",
                   result=False)


@scenario
def wp_huge_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.writeprotect(c.addr, PAGE, True), "EINVAL", "UFFDIO_WRITEPROTECT of one base page",
                   result=False)


# -- UFFDIO_CONTINUE -------------------------------------------------------------------------
def _minor_fault(c: Ctx, byte: int) -> oracles.Access:
    c.cache_page(byte)
    a = c.access(c.addr)
    oracles.expect_access(a, "minor", "a read of a page in the page cache")
    return a


@scenario
def continue_plain(c: Ctx) -> None:
    a = _minor_fault(c, 0xD1)
    check.eq(c.u.cont(c.addr, c.ps), c.ps, "uffdio_continue.mapped")
    oracles.expect_content(c.finish(a).data, want(0xD1), "the woken read")
    oracles.expect_pagemap(c.entry(), "the mapped page cache page", present=True, uffd_wp=False, file=True)
    expect_completed_write(c, c.addr, "a write to it")
    # shared: the write is the file's; private: a copy-on-write copy, the file is unchanged
    check.eq(c.file_head()[:1], bytes([0x77 if c.mt.map_shared else 0xD1]), "the file's first byte")
    oracles.expect_pagemap(c.entry(), "after the write", present=True, file=c.mt.map_shared)


@scenario
def continue_wp(c: Ctx) -> None:
    a = _minor_fault(c, 0xD2)
    check.eq(c.u.cont(c.addr, c.ps, int(abi.ContinueMode.WP)), c.ps, "uffdio_continue.mapped")
    oracles.expect_content(c.finish(a).data, want(0xD2), "the woken read")
    oracles.expect_pagemap(c.entry(), "the page mapped with MODE_WP", present=True, uffd_wp=True)
    w = c.access(c.addr, write=True)
    oracles.expect_access(w, "wp", "a write")
    c.u.writeprotect(c.addr, c.ps, False)
    c.finish(w)


@scenario
def continue_dontwake(c: Ctx) -> None:
    a = _minor_fault(c, 0xD4)
    check.eq(c.u.cont(c.addr, c.ps, int(abi.ContinueMode.DONTWAKE)), c.ps, "uffdio_continue.mapped")
    oracles.expect_pagemap(c.entry(), "the mapped page cache page", present=True)
    c.still_blocked(a, "after CONTINUE MODE_DONTWAKE")
    c.u.wake(c.addr, c.ps)
    oracles.expect_content(c.finish(a).data, want(0xD4), "the read woken by UFFDIO_WAKE")


@scenario
def continue_no_page(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.cont(c.addr, c.ps), "EFAULT", "UFFDIO_CONTINUE without a page cache page")


@scenario
def continue_eexist(c: Ctx) -> None:
    a = _minor_fault(c, 0xD3)
    check.eq(c.u.cont(c.addr, c.ps), c.ps, "the first UFFDIO_CONTINUE")
    c.finish(a)
    oracles.expect_errno(lambda: c.u.cont(c.addr, c.ps), "EEXIST", "the second UFFDIO_CONTINUE")


@scenario
def continue_anon(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.cont(c.addr, c.ps), "EINVAL", "UFFDIO_CONTINUE on anonymous memory")


@scenario
def continue_wp_unregistered(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.cont(c.addr, c.ps, int(abi.ContinueMode.WP)), "EINVAL",
                   "UFFDIO_CONTINUE MODE_WP into a range registered MINOR only")


@scenario
def continue_bad_mode(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.cont(c.addr, c.ps, 1 << 2), "EINVAL", "UFFDIO_CONTINUE mode 4", result=False)


@scenario
def continue_huge_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.cont(c.addr, PAGE), "EINVAL", "UFFDIO_CONTINUE of one base page")


# -- UFFDIO_POISON ---------------------------------------------------------------------------
def _poison_child(c: Ctx, ready: Pipe) -> int:
    """In a child: its own memory of the type, registered and poisoned, then read: the read
    must kill it with SIGBUS (exit 3: the poisoned read returned)."""
    r = c.mt.map(1)
    u = open_for(c.features)
    u.register(r.addr, r.size, matrix.MISSING)
    if u.poison(r.addr, r.size) != r.size:
        return 4
    ready.signal()
    die_quietly_of_sigbus()
    libc.read(r.addr, 1)
    return 3


def die_quietly_of_sigbus() -> None:
    """In a child about to die of SIGBUS: the default action, not the faulthandler the runner
    installed (which would print a Python stack for an expected death)."""
    faulthandler.disable()
    signal.signal(signal.SIGBUS, signal.SIG_DFL)


@scenario
def poison_plain(c: Ctx) -> None:
    check.eq(c.u.poison(c.addr, c.ps), c.ps, "uffdio_poison.updated")
    oracles.expect_pagemap(c.entry(), "the poisoned page", present=False)
    ready = Pipe()
    try:
        pid = fork_call(lambda: _poison_child(c, ready))
        res = None
        try:
            ready.wait(WAIT)
        finally:
            res = reap(pid, WAIT)
        oracles.expect_signal(res, signal.SIGBUS, "a read of a poisoned page (in a child)")
    finally:
        ready.close()


def _faulting_child(c: Ctx, sock: socket.socket) -> int:
    """In a child: its own memory of the type, registered MISSING with a uffd of its own, sent to
    the parent with the address; then a read of the memory, which the parent resolves.  Exit 3:
    the read returned; 4: a setup step failed (said on the socket's silence)."""
    libc.set_pdeathsig()
    try:
        r = c.mt.map(1)
        u = open_for(c.features)
        u.register(r.addr, r.size, matrix.MISSING)
        socket.send_fds(sock, [r.addr.to_bytes(8, "little")], [u.fd])
        u.close()
    except Exception:
        return 4
    die_quietly_of_sigbus()
    libc.read(r.addr, 1)
    return 3


def _child_gone(pid: int) -> Callable[[], bool]:
    return lambda: task_state(pid) in ("", "Z", "X")


@scenario
def poison_dontwake(c: Ctx) -> None:
    """The faulting access is a child process's: woken, it dies of SIGBUS, which would take a
    thread's whole process with it."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    res: ChildResult | None = None
    with parent:
        with child:
            pid = fork_call(lambda: _faulting_child(c, child))
        try:
            parent.settimeout(WAIT)
            try:
                msg, fds, _, _ = socket.recv_fds(parent, 8, 1)
            except TimeoutError:
                raise AssertionError(f"setup step failed: the child sent no uffd within {WAIT}s") from None
            if not fds:
                res = reap(pid, WAIT)
                raise AssertionError(f"setup step failed: the child sent no uffd ({res.describe()})")
            addr = int.from_bytes(msg, "little")
            with Userfaultfd(fds[0]) as u:
                oracles.expect_access(oracles.Access(False, u.read_msg(WAIT)), "missing", "the child's read of a hole")
                check.eq(u.poison(addr, c.ps, abi.POISON_MODE_DONTWAKE), c.ps, "uffdio_poison.updated")
                oracles.expect_asleep(pid, _child_gone(pid), "after POISON MODE_DONTWAKE", WAIT)
                with Pagemap(pid) as pm:  # the child sleeps: its pagemap is there to read
                    oracles.expect_pagemap(pm.entry(addr), "the child's poisoned page", present=False)
                u.wake(addr, c.ps)
                res = reap(pid, WAIT)
            oracles.expect_signal(res, signal.SIGBUS, "the child's read woken by UFFDIO_WAKE")
        finally:
            if res is None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError, TimeoutError):
                    reap(pid, WAIT)


@scenario
def poison_eexist(c: Ctx) -> None:
    c.populate(0x23)
    oracles.expect_errno(lambda: c.u.poison(c.addr, c.ps), "EEXIST", "UFFDIO_POISON onto a mapped page")
    oracles.expect_content(c.access(c.addr).data, want(0x23), "the page keeps its content")


@scenario
def poison_bad_mode(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.poison(c.addr, c.ps, 1 << 1), "EINVAL", "UFFDIO_POISON mode 2", result=False)


@scenario
def poison_huge_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.poison(c.addr, PAGE), "EINVAL", "UFFDIO_POISON of one base page")


# -- UFFDIO_MOVE -----------------------------------------------------------------------------
@scenario
def move_plain(c: Ctx) -> None:
    src = c.source(1, 0xE1)
    pfn = c.entry(src).pfn
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    check.eq(c.u.move(c.addr, src, c.ps), c.ps, "uffdio_move.move")
    oracles.expect_content(c.finish(a).data, want(0xE1), "the woken read")
    oracles.expect_pagemap(c.entry(), "the destination", present=True, uffd_wp=False)
    if pfn:  # PFNs are shown to root only
        check.eq(c.entry().pfn, pfn, "the destination's PFN (the source page itself)")
    oracles.expect_pagemap(c.entry(src), "the source", present=False)
    expect_completed_write(c, c.addr, "a write to the moved page")


@scenario
def move_thp(c: Ctx) -> None:
    size = c.region.size
    src = c.mt.map(1)
    c.stack.callback(src.close)
    libc.fill(src.addr, 0xE2, size)
    check.diag(f"{c.mt}: the source is {folio_desc(c.pm, src.addr)}")
    check.eq(c.u.move(c.addr, src.addr, size), size, "uffdio_move.move")
    oracles.expect_pagemap(c.entry(), "the destination", present=True)
    oracles.expect_pagemap(c.entry(src.addr), "the source", present=False)
    whole = bytes([0xE2]) * oracles.SAMPLE
    oracles.expect_content(c.access(c.addr).data, (whole, whole), "the destination's first page")
    last = c.addr + size - PAGE
    oracles.expect_content(c.access(last).data, (whole, whole), "the destination's last page")


@scenario
def move_dontwake(c: Ctx) -> None:
    size = c.region.size  # a page; anon-thp: one folio of the THP size
    src = c.mt.map(1)
    c.stack.callback(src.close)
    libc.fill(src.addr, 0xEC, size)
    if c.mt.thp:
        check.diag(f"{c.mt}: the source is {folio_desc(c.pm, src.addr)}")
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    check.eq(c.u.move(c.addr, src.addr, size, int(abi.MoveMode.DONTWAKE)), size, "uffdio_move.move")
    oracles.expect_pagemap(c.entry(), "the destination", present=True)
    oracles.expect_pagemap(c.entry(src.addr), "the source", present=False)
    c.still_blocked(a, "after MOVE MODE_DONTWAKE")
    c.u.wake(c.addr, size)
    whole = bytes([0xEC]) * oracles.SAMPLE
    oracles.expect_content(c.finish(a).data, (whole, whole), "the read woken by UFFDIO_WAKE")


@scenario
def move_hole(c: Ctx) -> None:
    src = memory.anon(c.ps)
    c.stack.callback(src.close)
    oracles.expect_errno(lambda: c.u.move(c.addr, src.addr, c.ps), "ENOENT", "UFFDIO_MOVE from a hole")


@scenario
def move_hole_allowed(c: Ctx) -> None:
    src = memory.anon(c.ps)
    c.stack.callback(src.close)
    mode = int(abi.MoveMode.ALLOW_SRC_HOLES)
    check.eq(c.u.move(c.addr, src.addr, c.ps, mode), c.ps, "uffdio_move.move (the hole counts as moved)")
    oracles.expect_pagemap(c.entry(), "the destination", present=False)


@scenario
def move_eexist(c: Ctx) -> None:
    c.populate(0x24)
    src = c.source(1, 0xE3)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EEXIST", "UFFDIO_MOVE onto a mapped page")
    oracles.expect_pagemap(c.entry(src), "the source stays", present=True)


@scenario
def move_cow_shared(c: Ctx) -> None:
    src = c.source(1, 0xE4)
    go = Pipe()
    try:
        pid = fork_call(lambda: go.wait(WAIT))
        try:
            oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EBUSY",
                                 "UFFDIO_MOVE of a page shared with a child")
        finally:
            go.signal()
            reap(pid, WAIT)
    finally:
        go.close()
    oracles.expect_pagemap(c.entry(src), "the source stays", present=True)


@scenario
def move_not_anon(c: Ctx) -> None:
    src = c.source(1, 0xE5)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EINVAL", f"UFFDIO_MOVE into {c.mt}")


@scenario
def move_prot_mismatch(c: Ctx) -> None:
    src = c.source(1, 0xE6)
    libc.mprotect(src, c.ps, abi.PROT_READ)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EINVAL", "UFFDIO_MOVE from a read-only VMA")


@scenario
def move_dst_unregistered(c: Ctx) -> None:
    src = c.source(1, 0xE7)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EINVAL", "UFFDIO_MOVE into an unregistered range")


@scenario
def move_src_cross(c: Ctx) -> None:
    src = c.source(2, 0xE8)
    libc.munmap(src + c.ps, c.ps)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, 2 * c.ps), "EINVAL", "UFFDIO_MOVE across the source VMA's end")


@scenario
def move_bad_mode(c: Ctx) -> None:
    src = c.source(1, 0xE9)
    oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps, 1 << 2), "EINVAL", "UFFDIO_MOVE mode 4", result=False)


@scenario
def move_unaligned(c: Ctx) -> None:
    src = c.source(1, 0xEA)
    oracles.expect_errno(lambda: c.u.move(c.addr + 1, src, c.ps), "EINVAL", "UFFDIO_MOVE to addr+1", result=False)


@scenario
def move_pinned(c: Ctx) -> None:
    why = iouring.disabled_reason() or iouring.memlock_limit_reason(c.ps)
    if why:
        pytest.skip(why)
    src = c.source(1, 0xEB)
    try:
        ring = iouring.Ring()
    except iouring.IoUringUnavailable as e:
        pytest.skip(str(e))
    with ring:
        ring.register_buffer(src, c.ps)  # a R/W longterm pin (io_uring/rsrc.c)
        oracles.expect_errno(lambda: c.u.move(c.addr, src, c.ps), "EBUSY", "UFFDIO_MOVE of a pinned page")
        ring.unregister_buffers()
    oracles.expect_pagemap(c.entry(src), "the source stays", present=True)


# -- while the mappings change ----------------------------------------------------------------
class Remover:
    """A thread discarding page 0 of the region (MADV_DONTNEED, MADV_REMOVE on shared memory):
    with UFFD_FEATURE_EVENT_REMOVE it sleeps in userfaultfd_remove() until the REMOVE event is
    read, and meanwhile the uffd's mmap_changing makes the resolving ioctls fail with EAGAIN."""

    def __init__(self, c: Ctx) -> None:
        self.c = c
        self.t = Toucher.call(lambda: libc.madvise(c.addr, c.ps, c.mt.discard_advice), name="madvise")
        if not c.u.wait(WAIT):
            raise AssertionError(f"no REMOVE event within {WAIT}s of the madvise ({_where(self.t)})")

    def release(self) -> None:
        msg = self.c.u.read_msg(WAIT)
        check.eq(msg.event, abi.Event.REMOVE, "the pending message")
        try:
            self.t.join(WAIT)  # the madvise returns once its event was read
        except OSError as e:
            raise AssertionError(f"the madvise failed: {e}") from None
        self.t.close()


def _eagain(c: Ctx, call: Callable[[], object], what: str, result: bool = True) -> None:
    r = Remover(c)
    try:
        oracles.expect_errno(call, "EAGAIN", what, result=result)
    finally:
        r.release()


@scenario
def eagain_copy(c: Ctx) -> None:
    src = c.source(1, 0xA1)
    _eagain(c, lambda: c.u.copy(c.addr, src, c.ps), "UFFDIO_COPY with a REMOVE event unread")


@scenario
def eagain_zeropage(c: Ctx) -> None:
    _eagain(c, lambda: c.u.zeropage(c.addr, c.ps), "UFFDIO_ZEROPAGE with a REMOVE event unread")


@scenario
def eagain_writeprotect(c: Ctx) -> None:
    _eagain(c, lambda: c.u.writeprotect(c.addr, c.ps, True), "UFFDIO_WRITEPROTECT with a REMOVE event unread",
            result=False)


@scenario
def eagain_continue(c: Ctx) -> None:
    _eagain(c, lambda: c.u.cont(c.addr, c.ps), "UFFDIO_CONTINUE with a REMOVE event unread")


@scenario
def eagain_poison(c: Ctx) -> None:
    _eagain(c, lambda: c.u.poison(c.addr, c.ps), "UFFDIO_POISON with a REMOVE event unread")


@scenario
def eagain_move(c: Ctx) -> None:
    src = c.source(1, 0xA2)
    _eagain(c, lambda: c.u.move(c.addr, src, c.ps), "UFFDIO_MOVE with a REMOVE event unread")


# -- UFFDIO_WAKE -----------------------------------------------------------------------------
@scenario
def wake_refault(c: Ctx) -> None:
    a = c.access(c.addr)
    oracles.expect_access(a, "missing", "a read of a hole")
    c.still_blocked(a, "before UFFDIO_WAKE")
    c.u.wake(c.addr, c.ps)
    again = c.u.read_msg(WAIT)
    check.eq(again.address & ~(c.ps - 1), a.msg.address & ~(c.ps - 1), "the woken read faults again at the page")
    src = c.source(1, 0xF1)
    c.u.copy(c.addr, src, c.ps)
    oracles.expect_content(c.finish(a).data, want(0xF1), "the read after UFFDIO_COPY")


@scenario
def wake_unaligned(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.wake(c.addr + 1, c.ps), "EINVAL", "UFFDIO_WAKE at addr+1", result=False)


@scenario
def wake_zero_len(c: Ctx) -> None:
    oracles.expect_errno(lambda: c.u.wake(c.addr, 0), "EINVAL", "UFFDIO_WAKE of length 0", result=False)


# ---------------------------------------------------------------------------------------
# the cases


@pytest.mark.parametrize(("row", "mt"), cells())
def test_uffd_op(row: matrix.Row, mt: MemType) -> None:
    """One cell of the matrix: ``row``'s documented outcome of its operation on ``mt``
    (the row's ``source`` says where it is documented)."""
    check.note(row.case_name(str(mt)))
    check.diag(f"documented: {row.source}")
    c = Ctx(row, mt)
    try:
        SCENARIOS[row.scenario](c)
    except UffdError as e:
        raise AssertionError(f"setup or resolution step failed: {e}") from None
    finally:
        c.close()
