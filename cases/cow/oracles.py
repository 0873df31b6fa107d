"""The COW oracles of cow.c as plain functions (the negative controls in tests/ call them too).

Each takes the memory a backing prepared and returns "" when the kernel behaved, else
cow.c's message ("Leak from parent into child", "Leak from child into parent",
"Longterm R/W pin is not reliable", "Longterm R/O pin is not reliable", "Other mapping
modified").  Errors of the machinery (a child that crashed, a syscall that failed) raise.

The parent/child handshake is cow.c's comm pipes (lib.kernel.tasks.CommPipes); a child's verdict
travels as its exit status (0 = it saw the old content, 1 = it did not, 2 = it failed).
"""

from __future__ import annotations

import errno
import os
import resource
import select
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cases.cow.backings import Snapshot
from lib.kernel import abi, caps, libc, setup_step, system, tasks
from lib.kernel.gup_test import GupTest, Pin
from lib.kernel.iouring import IoUringUnavailable, Ring
from lib.kernel.pagemap import Entry, Pagemap, clear_soft_dirty

PROT_RW = abi.PROT_READ | abi.PROT_WRITE
MODIFY = 0xFF  # cow.c: "modify" is memset(mem, 0xff, size)
LEAK_P2C = "Leak from parent into child"
LEAK_C2P = "Leak from child into parent"
RW_PIN_UNRELIABLE = "Longterm R/W pin is not reliable"
RO_PIN_UNRELIABLE = "Longterm R/O pin is not reliable"
OTHER_MODIFIED = "Other mapping modified"
# How long one process of a case waits for the other (a snapshot, a 1 GiB copy-on-write
# copy): no kernel guarantee says how fast that is (a loaded TCG guest copies 1 GiB in tens of
# seconds), so this only bounds a lost peer.  The case's own deadline (run_suite.py --timeout
# or the case's deadline mark) is what ends a case that is too slow or hung, with a TIMEOUT
# report naming where every thread was blocked.
TIMEOUT = 3600.0


# ---------------------------------------------------------------------------------------
# process helpers


class NotReady(Exception):
    """The child exited before it signalled child_ready (it is reaped by finish_child)."""


def wait_child_ready(comm: tasks.CommPipes, pid: int, timeout: float = TIMEOUT) -> None:
    """Wait for the child's ready signal; a child that exits first raises NotReady (no hang)."""
    pidfd = libc.pidfd_open(pid)
    try:
        p = select.poll()
        p.register(comm.child_ready.r, select.POLLIN)
        p.register(pidfd, select.POLLIN)
        events = dict(p.poll(int(timeout * 1000)))
        if comm.child_ready.r in events:
            comm.child_ready.wait(0)
            return
        if pidfd in events:
            raise NotReady(f"child {pid} exited before it was ready")
        raise TimeoutError(f"child {pid} not ready within {timeout}s")
    finally:
        os.close(pidfd)


def not_ready_error(res: tasks.ChildResult) -> AssertionError:
    if res.exit_code == LOST:
        return AssertionError(FORK_LOST)
    return AssertionError(f"child failed before it was ready: {res.describe()}")


def fork_waiting_child(comm: tasks.CommPipes) -> int:
    """fork() a child that signals it is ready and waits for the parent (finish_child), so the
    parent's pages stay shared with it meanwhile; returns once it is ready.  A child that
    exits first is reaped here and NotReady raised."""
    def wait_in_child() -> bool:
        comm.child_ready.signal()
        comm.parent_ready.wait(TIMEOUT)
        return True

    pid = tasks.fork_call(wait_in_child)
    try:
        wait_child_ready(comm, pid)
    except BaseException:
        finish_child(comm, pid)
        raise
    return pid


def finish_child(comm: tasks.CommPipes, pid: int) -> tasks.ChildResult:
    """Release the child (parent_ready) and reap it."""
    try:
        comm.parent_ready.signal()
    except OSError:
        pass
    return tasks.reap(pid, TIMEOUT)


LOST = 3  # child exit status: it did not see the parent's content right after fork()


def child_verdict(res: tasks.ChildResult) -> bool:
    """True: the child saw the old content; False: it did not; raises when it failed."""
    if res.exit_code in (0, 1):
        return res.exit_code == 0
    if res.exit_code == LOST:
        raise AssertionError(FORK_LOST)
    raise AssertionError(f"child failed: {res.describe()}")


FORK_LOST = ("fork() did not preserve the private mapping: right after fork(), before any "
             "modification, the child did not read the content the parent had written")


def inherited(mem: int, size: int, expect: int | None) -> bool:
    """The child reads what the parent wrote before fork() (a byte pattern; None: unknown)."""
    return expect is None or libc.is_uniform(mem, expect, size)


def read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError(f"pipe closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def map_ro_then_rw(addr: int, size: int) -> None:
    """cow.c: map R/O, clear soft-dirty (so mprotect() cannot map it writable again at
    once), map R/W: the next write is a write fault."""
    libc.mprotect(addr, size, abi.PROT_READ)
    clear_soft_dirty()
    libc.mprotect(addr, size, PROT_RW)


# ---------------------------------------------------------------------------------------
# A1-A4: the child checks, the parent modifies


def child_memcmp(mem: int, size: int, comm: tasks.CommPipes, expect: int | None = None) -> bool | int:
    """Snapshot, let the parent modify, check the snapshot still holds (cow.c child_memcmp_fn).

    Beyond cow.c: with ``expect`` (the byte the parent filled the range with) the snapshot
    must be that content, i.e. fork() handed the child the parent's data."""
    if not inherited(mem, size, expect):
        return LOST
    old = Snapshot.take(mem, size)
    comm.child_ready.signal()
    comm.parent_ready.wait(TIMEOUT)
    return old.matches(mem)


def child_vmsplice_memcmp(mem: int, size: int, comm: tasks.CommPipes, expect: int | None = None) -> bool | int:
    """vmsplice() the range into a pipe (a R/O GUP reference), unmap it, let the parent
    modify, then the pipe must still give the old content (cow.c child_vmsplice_memcmp_fn;
    CVE-2020-29374).  The pipe is read only after the parent modified the memory."""
    if not inherited(mem, size, expect):
        return LOST
    old = Snapshot.take(mem, size)
    r, w = os.pipe2(os.O_CLOEXEC)
    transferred = libc.vmsplice(w, mem, size)
    if transferred == 0:
        raise OSError(errno.EINVAL, "vmsplice() transferred nothing")
    libc.munmap(mem, size)
    comm.child_ready.signal()
    comm.parent_ready.wait(TIMEOUT)
    return old.matches_bytes(read_exact(r, transferred))


def cow_in_parent(mem: int, size: int, do_mprotect: bool,
                  child_fn: Callable[..., bool | int] = child_memcmp, expect: int | None = None) -> str:
    """fork(); the child checks with ``child_fn``; the parent modifies (after mprotect()
    R/O and back R/W when ``do_mprotect``).  cow.c do_test_cow_in_parent.  ``expect``: the
    byte the range holds before fork() (checked in the child, see child_memcmp)."""
    comm = tasks.CommPipes()
    try:
        pid = tasks.fork_call(lambda: child_fn(mem, size, comm, expect))
        ready = False
        try:
            wait_child_ready(comm, pid)
            ready = True
            if do_mprotect:
                # mprotect() optimisations might map pages writable directly
                libc.mprotect(mem, size, abi.PROT_READ)
                libc.mprotect(mem, size, PROT_RW)
            libc.fill(mem, MODIFY, size)
        except NotReady:
            pass
        finally:
            res = finish_child(comm, pid)
        if not ready:
            raise not_ready_error(res)
        return "" if child_verdict(res) else LEAK_P2C
    finally:
        comm.close()


# ---------------------------------------------------------------------------------------
# A5-A6: the parent pins with vmsplice(), the child modifies


def vmsplice_in_parent(mem: int, size: int, before_fork: bool, expect: int | None = None) -> str:
    """The parent vmsplice()s the range (before or after fork()), unmaps it once the child
    is ready; the child modifies; the pipe must give the old content (cow.c
    do_test_vmsplice_in_parent).  ``expect`` as for cow_in_parent: the child checks it
    inherited the content before it modifies."""
    old = Snapshot.take(mem, size)
    comm = tasks.CommPipes()
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        transferred = libc.vmsplice(w, mem, size) if before_fork else 0

        def modify_in_child() -> bool | int:
            lost = not inherited(mem, size, expect)
            comm.child_ready.signal()
            comm.parent_ready.wait(TIMEOUT)
            libc.fill(mem, MODIFY, size)
            return LOST if lost else True

        pid = tasks.fork_call(modify_in_child)
        try:
            if not before_fork:
                transferred = libc.vmsplice(w, mem, size)
            if transferred <= 0:
                raise AssertionError("vmsplice() failed: transferred nothing")
            wait_child_ready(comm, pid)
            libc.munmap(mem, size)
        except NotReady:
            pass
        finally:
            res = finish_child(comm, pid)  # the child modifies, then quits
        if res.exit_code == LOST:
            raise AssertionError(FORK_LOST)
        if res.exit_code != 0:
            raise AssertionError(f"wait() failed: {res.describe()}")
        data = read_exact(r, transferred)
        return "" if old.matches_bytes(data) else LEAK_C2P
    finally:
        comm.close()
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------------------------------
# A7-A8: io_uring fixed buffers (R/W longterm pins)


def memlock_note() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def memlock_refused(e: OSError) -> bool:
    """io_uring accounts registered buffers against RLIMIT_MEMLOCK unless the process has
    CAP_IPC_LOCK (io_uring/rsrc.c io_account_mem): ENOMEM/EPERM under a finite limit without
    the capability is that limit (a skip); any other refusal is a failure."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return (e.errno in (errno.ENOMEM, errno.EPERM) and soft != resource.RLIM_INFINITY
            and not caps.has(caps.CAP_IPC_LOCK))


IOURING_FULL_MAX = 2 * 1024 * 1024  # write the whole buffer up to this size (every THP)
IOURING_SAMPLE = 1024 * 1024


def iouring_chunks(size: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of the buffer that are written to the file and compared.

    The whole buffer up to 2 MiB, as cow.c does.  A larger buffer is a single hugetlb page
    (a 1 GiB folio): a pin that lost track of it shows in every part of it, so 1 MiB at
    nine offsets spread over it (first and last MiB included) stand for the whole, which
    keeps the case from writing 1 GiB to a file.
    """
    if size <= IOURING_FULL_MAX:
        return [(0, size)]
    step = size // 8
    offs = sorted({min(k * step, size - IOURING_SAMPLE) for k in range(8)} | {size - IOURING_SAMPLE})
    return [(o, IOURING_SAMPLE) for o in offs]


def iouring(mem: int, size: int, use_fork: bool, after_register: Callable[[], None] | None = None) -> str:
    """Register the range as a fixed buffer (FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM); then fork()
    a child that stays alive (``use_fork``) or map the range R/O and back R/W; modify through
    the page table; WRITE_FIXED the buffer to a file: the file must hold what memory holds,
    i.e. the pin sees the modification (cow.c do_test_iouring; see iouring_chunks for
    buffers over 2 MiB).  Raises IoUringUnavailable (a skip) where io_uring is unavailable
    or RLIMIT_MEMLOCK refuses the registration; any other refusal of the pin is a failure.
    ``after_register`` is a hook for the negative controls (tests/test_cow_negative.py)."""
    with Ring() as ring:
        try:
            ring.register_buffer(mem, size)
        except OSError as e:
            if memlock_refused(e):
                raise IoUringUnavailable(f"io_uring_register_buffers() failed: {e.strerror}; "
                                         f"RLIMIT_MEMLOCK {memlock_note()} without CAP_IPC_LOCK") from None
            raise setup_step.SetupFailed(setup_step.message("io_uring_register_buffers() (the longterm pin)", e)) from e
        if after_register is not None:
            after_register()
        sink = libc.memfd_create("kmm-cow-iouring")
        comm = tasks.CommPipes()
        pid = None
        try:
            if use_fork:
                # the child stays alive until we are done; the pinned page must not be shared
                pid = fork_waiting_child(comm)
            else:
                map_ro_then_rw(mem, size)
            libc.fill(mem, MODIFY, size)
            chunks = iouring_chunks(size)
            total = sum(n for _, n in chunks)
            pos = 0
            for off, n in chunks:
                res = ring.write_fixed(sink, mem + off, n, pos)
                if res != n:
                    raise AssertionError(f"write_fixed failed: res {res}"
                                         + (f" ({os.strerror(-res)})" if res < 0 else f" of {n}"))
                pos += n
            view = libc.mmap(total, abi.PROT_READ, abi.MAP_SHARED | abi.MAP_POPULATE, sink, 0)
            try:
                pos, same = 0, True
                for off, n in chunks:
                    same = same and libc.mem_equal(mem + off, view + pos, n)
                    pos += n
            finally:
                libc.munmap(view, total)
        finally:
            if pid is not None:
                finish_child(comm, pid)
            comm.close()
            os.close(sink)
            ring.unregister_buffers()
    return "" if same else RW_PIN_UNRELIABLE


def iouring_or_skip(mem: int, size: int, use_fork: bool) -> str:
    try:
        return iouring(mem, size, use_fork)
    except IoUringUnavailable as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------------
# A9-A14, N2-N3: R/O longterm pins through gup_test

RO_PIN = "plain"  # N2/N3: no fork, no mprotect
RO_PIN_SHARED = "shared"
RO_PIN_PREVIOUSLY_SHARED = "previously_shared"
RO_PIN_RO_EXCLUSIVE = "ro_exclusive"


def ro_pin(mem: int, size: int, test: str, fast: bool, gup: GupTest) -> str:
    """Take a R/O longterm pin (it must unshare a COW-shared or R/O-mapped page), modify
    through the page table, read through the pin: it must see the modification (cow.c
    do_test_ro_pin).  Skips without gup_test, or when START fails with EINVAL."""
    if gup.path is None:
        pytest.skip(gup.reason)
    comm = tasks.CommPipes()
    pid = None
    try:
        if test in (RO_PIN_SHARED, RO_PIN_PREVIOUSLY_SHARED):
            pid = fork_waiting_child(comm)
            if test == RO_PIN_PREVIOUSLY_SHARED:
                # mapped R/O in our page table, but no longer shared
                finish_child(comm, pid)
                pid = None
        elif test == RO_PIN_RO_EXCLUSIVE:
            map_ro_then_rw(mem, size)
        with Pin(gup.path) as pin:
            try:
                pin.start(mem, size, fast)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    pytest.skip("PIN_LONGTERM_TEST_START failed: EINVAL")
                raise
            libc.fill(mem, MODIFY, size)
            seen = pin.read(size)
        return "" if libc.compare(mem, seen) else RO_PIN_UNRELIABLE
    finally:
        if pid is not None:
            finish_child(comm, pid)
        comm.close()


# ---------------------------------------------------------------------------------------
# N1: non-anonymous COW


def non_anon_cow(mem: int, smem: int, size: int) -> str:
    """Modify the private mapping; the other mapping of the same page must not change
    (cow.c test_cow)."""
    old = Snapshot.take(smem, size)
    libc.fill(mem, MODIFY, size)
    return "" if old.matches(smem) else OTHER_MODIFIED


# ---------------------------------------------------------------------------------------
# beyond cow.c: exclusivity and the copy made visible in pagemap


@dataclass
class CowObservation:
    """pagemap entries of the range (one per base page) at each step of a COW."""

    before: list[Entry]  # the writer alone, after writing
    forked_writer: list[Entry]  # right after fork(), COW-shared
    forked_other: list[Entry]
    cow_writer: list[Entry]  # after the writer's COW fault
    cow_other: list[Entry]


def observe_cow(mem: int, size: int, write: Callable[[], None] | None = None) -> CowObservation:
    """fork(); read both processes' pagemap right after fork and after this process wrote
    the range (the child keeps its mapping untouched).  ``write`` replaces the write of the
    whole range (a hook for the negative controls in tests/test_cow_negative.py)."""
    n = size // libc.PAGE_SIZE
    comm = tasks.CommPipes()
    with Pagemap() as pm:
        before = pm.entries(mem, n)
        pid = None
        try:
            pid = fork_waiting_child(comm)
            with Pagemap(pid) as cpm:
                fw, fo = pm.entries(mem, n), cpm.entries(mem, n)
                if write is None:
                    libc.fill(mem, MODIFY, size)
                else:
                    write()
                cw, co = pm.entries(mem, n), cpm.entries(mem, n)
        finally:
            if pid is not None:
                res = finish_child(comm, pid)
            comm.close()
    if res.exit_code != 0:
        raise AssertionError(f"child failed: {res.describe()}")
    return CowObservation(before, fw, fo, cw, co)


def per_page_mapcount() -> bool | None:
    """Whether bit 56 of a page in a large folio reflects that page's own mapcount.

    Documentation/admin-guide/mm/pagemap.rst: with CONFIG_NO_PAGE_MAPCOUNT (6.15+), a page
    of a large folio may read "not exclusively mapped" while the folio is, or once was,
    "maybe mapped shared" (fs/proc/task_mmu.c __folio_page_mapped_exclusively falls back
    to folio_maybe_mapped_shared()).  Before 6.15 the option does not exist and mapcounts
    are per page.  None: the kernel config cannot be read."""
    no_page_mapcount = system.config_enabled("CONFIG_NO_PAGE_MAPCOUNT")
    return None if no_page_mapcount is None else not no_page_mapcount


def _bad(step: str, es: list[Entry], ok: Callable[[int, Entry], bool], expected: str) -> list[str]:
    """One message for the pages of ``es`` that fail ``ok`` (count and the first three)."""
    bad = [(i, e) for i, e in enumerate(es) if not ok(i, e)]
    if not bad:
        return []
    first = ", ".join(f"page {i}: {e}" for i, e in bad[:3])
    return [f"{step}: expected {expected}; {len(bad)} of {len(es)} pages are not ({first})"]


def exclusivity_problems(o: CowObservation, other_mapcount_exact: bool = True) -> list[str]:
    """What a COW must show in pagemap for every base page of the range, whatever maps it
    (a base page, a PMD-mapped THP, a PTE-mapped THP or mTHP).

    Documentation/admin-guide/mm/pagemap.rst, bit 56 "page exclusively mapped", bits 0-54
    the PFN; for pages of large folios bit 56 is clear whenever the folio is maybe mapped
    in another process, and set when the folio is certainly mapped only in this one:

    * before fork(): the page the process wrote is present and exclusive;
    * right after fork(), in both processes: present, not exclusive (the folio is mapped
      by both), and the original PFN (COW shares, it does not copy);
    * after the writer's write fault: the writer's page is present and exclusive (a page
      only it maps) and its PFN differs from the original and from the other process's
      (the two now hold different data: one physical page cannot hold both); the other
      process keeps the original PFN;
    * ``other_mapcount_exact``: also the other process's page is exclusive again, since
      the writer no longer maps it.  Guaranteed for base pages, and for large folios only
      where mapcounts are per page (see per_page_mapcount): with CONFIG_NO_PAGE_MAPCOUNT
      a folio that was once mapped shared may stay "maybe mapped shared".
    """
    out: list[str] = []
    orig = [e.pfn for e in o.before]
    out += _bad("written range before fork(), writer", o.before,
                lambda i, e: e.present and e.exclusive and bool(e.pfn), "present+exclusive with a PFN")
    for who, es in (("writer", o.forked_writer), ("other", o.forked_other)):
        out += _bad(f"right after fork(), {who}", es, lambda i, e: e.present and not e.exclusive,
                    "present, not exclusive")
        out += _bad(f"right after fork(), {who}", es, lambda i, e: e.pfn == orig[i], "the original PFN")
    out += _bad("after the COW fault, writer", o.cow_writer, lambda i, e: e.present and e.exclusive,
                "present+exclusive")
    same = [i for i, e in enumerate(o.cow_writer) if e.pfn is not None and e.pfn == orig[i]]
    if same:
        out.append(f"after the COW fault, writer: PFN unchanged on {len(same)} of {len(orig)} pages "
                   f"(page {same[0]}: {orig[same[0]]:#x}): no copy was made")
    out += _bad("after the COW fault, writer vs other", o.cow_writer,
                lambda i, e: e.pfn is None or e.pfn != o.cow_other[i].pfn, "a PFN other than the other process's")
    out += _bad("after the COW fault, other", o.cow_other, lambda i, e: e.present and e.pfn == orig[i],
                "present with the original PFN")
    if other_mapcount_exact:
        out += _bad("after the COW fault, other (the writer no longer maps the page)", o.cow_other,
                    lambda i, e: e.exclusive, "exclusive")
    return out


def summarize(o: CowObservation) -> list[str]:
    """Counts per step (diagnostics kept with the verdict)."""

    def line(step: str, es: list[Entry], ref: list[Entry]) -> str:
        excl = sum(e.exclusive for e in es)
        same = sum(e.pfn is not None and e.pfn == r.pfn for e, r in zip(es, ref))
        pres = sum(e.present for e in es)
        return f"{step}: present {pres}/{len(es)}, exclusive {excl}/{len(es)}, original PFN {same}/{len(es)}"

    return [
        line("before fork, writer", o.before, o.before),
        line("after fork, writer", o.forked_writer, o.before),
        line("after fork, other", o.forked_other, o.before),
        line("after COW, writer", o.cow_writer, o.before),
        line("after COW, other", o.cow_other, o.before),
    ]
