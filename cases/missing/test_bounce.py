"""bounce: the uffd-stress design (selftests/mm/uffd-stress.c), sized for Python.

Two areas, src and dst, of one memory type; every page carries a pthread mutex at offset 0
and a counter after it, mirrored in ``count_verify``.  Per CPU three threads run in one
bounce: a *locker* takes the mutex of a dst page (the first touch of a missing page is that
pthread_mutex_lock, a read fault), checks the counter against ``count_verify``, increments
both and unlocks; a *handler* serves the faults (blocking read(2) of the uffd, or poll(2) on a
non-blocking uffd) with UFFDIO_COPY from src (COPY_MODE_WP when uffd-wp is in play) and
unprotects WP faults; a *background copier* copies its slice src -> dst (EEXIST is fine) and,
with uffd-wp, write-protects its slice after the first half.  When the copiers are done src is
released, the lockers and handlers stop, dst is unprotected and unregistered, the counters are
verified, and src and dst swap.  The bounce number counts down from 15 to 0 and its bits select
the mode: 1 random page order, 2 racing (all lockers start at the same page), 4 verify, 8 poll;
so 16 bounces run all 16 combinations.  A fault with the WRITE flag, a counter that does not
match, any ioctl error other than EEXIST, or a COPY onto a just-copied page that does not fail
with EEXIST fails the bounce.  Counters are verified after every bounce (upstream only in the
verify bounces; the EEXIST re-copy is tried on each copier's first successful copy of every bounce, and must
have happened at least once over the run: upstream does it every 10 s).

Sizes: 8 MiB of base pages, 8 huge pages per area for hugetlb (upstream runs 20 MiB and 128 MiB:
Python is slower, and the suite's 2 MiB pool is grown to 2 x 8 + 10 pages for this).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import select
import threading
from dataclasses import dataclass, field

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi, libc, memory, memtypes, system
from lib.kernel.memtypes import UFFD_UNIT_KINDS, MemType, mem_types
from lib.kernel.uffd import Msg, UffdError, Userfaultfd, open_for

BOUNCE_RANDOM, BOUNCE_RACING, BOUNCE_VERIFY, BOUNCE_POLL = 1, 2, 4, 8
BOUNCES = 16
BASE_BYTES = 8 * system.MiB
HUGE_PAGES = 8


def nr_cpus() -> int:
    return max(1, min(32, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class BounceMem:
    """A memory type for bounce; prepare() grows the hugetlb pool as uffd-stress requires."""

    mt: MemType

    @property
    def nr_pages(self) -> int:
        per_cpu = (HUGE_PAGES if self.mt.hugetlb else BASE_BYTES // self.mt.page_size) // nr_cpus()
        return per_cpu * nr_cpus()

    @property
    def pool_needed(self) -> int:
        return 2 * self.nr_pages + 10

    def prepare(self, settings) -> None:
        if self.mt.hugetlb and self.mt.size < system.GiB:
            memtypes.grow_pool(settings, self.mt.size, self.pool_needed)

    def __str__(self) -> str:
        return self.mt.name


# uffd-stress' five test types (run_vmtests.sh runs each): anon, shmem, shmem-private (shmem mapped
# MAP_SHARED all the same: only uffd-common's map_shared flag differs, which shmem ignores), hugetlb,
# hugetlb-private (the hugetlb memfd MAP_PRIVATE, released with MADV_DONTNEED)
MEMS = [BounceMem(m) for m in mem_types(UFFD_UNIT_KINDS)]


def mode_name(bounce: int) -> str:
    bits = ((BOUNCE_RANDOM, "rnd"), (BOUNCE_RACING, "racing"), (BOUNCE_VERIFY, "ver"))
    parts = [n for bit, n in bits if bounce & bit]
    return " ".join([*parts, "poll" if bounce & BOUNCE_POLL else "read"])


def map_area(mt: MemType, npages: int) -> memory.Region:
    """uffd-stress' areas: hugetlb mapped MAP_NORESERVE (uffd-common)."""
    return mt.map(npages, noreserve=mt.hugetlb)


@dataclass
class Bounce:
    """One bounce's shared state."""

    u: Userfaultfd
    src: memory.Region
    dst: memory.Region
    sentinel: memory.Region
    count_verify: list[int]
    bounce: int
    wp: bool
    cpus: int
    finished: bool = False
    errors: list[str] = field(default_factory=list)
    missing: int = 0
    wp_faults: int = 0
    eexist_checked: int = 0
    handle: object = None  # the fault handler: handle_fault, or a negative control's

    @property
    def ps(self) -> int:
        return self.dst.page_size

    @property
    def nr_pages(self) -> int:
        return self.dst.npages

    def fail(self, text: str) -> None:
        self.errors.append(f"bounce {self.bounce} ({mode_name(self.bounce)}): {text}")


def locker(b: Bounce, cpu: int) -> None:
    per_cpu = b.nr_pages // b.cpus
    page_nr = -b.bounce
    if not b.bounce & BOUNCE_RACING:
        page_nr += cpu * per_cpu
    rnd = random.Random(os.urandom(8))
    while not b.finished:
        page_nr = rnd.getrandbits(63) if b.bounce & BOUNCE_RANDOM else page_nr + 1
        page_nr %= b.nr_pages
        addr = b.dst.addr + page_nr * b.ps
        libc.mutex_lock(addr)
        count = support.read_count(addr + support.COUNT_OFF)
        if count != b.count_verify[page_nr]:
            b.fail(f"page_nr {page_nr} memory corruption {count} {b.count_verify[page_nr]}")
            b.finished = True
        count += 1
        support.write_count(addr + support.COUNT_OFF, count)
        b.count_verify[page_nr] = count
        libc.mutex_unlock(addr)


def copy_page(b: Bounce, offset: int, check_eexist: bool = False) -> bool:
    """uffd-common's __copy_page(retry): COPY, EEXIST -> wake; optionally prove EEXIST."""
    dst, src = b.dst.addr + offset, b.src.addr + offset
    mode = abi.CopyMode.WP if b.wp else 0
    try:
        n = b.u.copy(dst, src, b.ps, mode)
    except UffdError as e:
        if e.errno != errno.EEXIST or e.result != -errno.EEXIST:
            raise
        b.u.wake(dst, b.ps)
        return False
    if n != b.ps:
        raise AssertionError(f"UFFDIO_COPY copied {n} of {b.ps}")
    if check_eexist:  # uffd-stress' test_uffdio_copy_eexist retry
        try:
            b.u.copy(dst, src, b.ps, mode)
        except UffdError as e:
            if e.errno != errno.EEXIST:
                raise
            b.eexist_checked += 1
        else:
            raise AssertionError(f"UFFDIO_COPY onto just-copied page {offset // b.ps} succeeded")
    return True


def handle_fault(b: Bounce, m: Msg) -> bool:
    """uffd_handle_page_fault; False when the message was the stop sentinel."""
    if m.event != abi.Event.PAGEFAULT:
        raise AssertionError(f"unexpected event {m}")
    if b.sentinel.addr <= m.address < b.sentinel.end:
        b.u.zeropage(m.address & ~(memory.PAGE_SIZE - 1), memory.PAGE_SIZE)
        return False
    addr = m.address & ~(b.ps - 1)
    if m.is_wp:
        b.u.writeprotect(addr, b.ps, False)
        b.wp_faults += 1
        return True
    if m.is_write:
        raise AssertionError(f"unexpected write fault at {m.address:#x}")
    # as upstream's __copy_page, the handler's successful copies are eligible for the EEXIST
    # retry too: every bounce copies some page successfully (by a copier or here), so the
    # retry is proven once per bounce whichever thread wins each page
    copy_page(b, addr - b.dst.addr, check_eexist=not b.eexist_checked)
    b.missing += 1
    return True


def read_handler(b: Bounce) -> None:
    """Blocking read(2) of one message at a time until a sentinel fault arrives."""
    while True:
        try:
            msgs = b.u.read_msgs(1)
            if msgs and not b.handle(b, msgs[0]):
                return
        except Exception as e:
            b.fail(f"handler: {type(e).__name__}: {e}")
            b.finished = True


def poll_handler(b: Bounce, stop_fd: int) -> None:
    p = select.poll()
    p.register(b.u.fd, select.POLLIN)
    p.register(stop_fd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in p.poll(1000)}
        if stop_fd in ready:
            return
        if b.u.fd in ready:
            try:
                for m in b.u.read_msgs(16):
                    b.handle(b, m)
            except Exception as e:
                b.fail(f"handler: {type(e).__name__}: {e}")
                b.finished = True


def copier(b: Bounce, cpu: int) -> None:
    per_cpu = b.nr_pages // b.cpus
    start, end = cpu * per_cpu, (cpu + 1) * per_cpu
    mid = (start + end) // 2
    checked = False
    try:
        for nr in range(start, mid):
            checked = copy_page(b, nr * b.ps, check_eexist=not checked) or checked
        if b.wp:
            b.u.writeprotect(b.dst.addr + start * b.ps, per_cpu * b.ps, True)
        for nr in range(mid, end):
            checked = copy_page(b, nr * b.ps, check_eexist=not checked) or checked
    except Exception as e:
        b.fail(f"copier {cpu}: {type(e).__name__}: {e}")


def release(mt: MemType, r: memory.Region) -> None:
    libc.madvise(r.addr, r.size, mt.discard_advice)


def stress(b: Bounce, mt: MemType) -> None:
    def thread(fn, *args) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        return t

    poll = bool(b.bounce & BOUNCE_POLL)
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(b.cpus)] if poll else []
    lockers = [thread(locker, b, c) for c in range(b.cpus)]
    handlers = [thread(poll_handler, b, pipes[c][0]) if poll else thread(read_handler, b) for c in range(b.cpus)]
    copiers = [thread(copier, b, c) for c in range(b.cpus)]
    for t in copiers:
        t.join(60)
    release(mt, b.src)
    b.finished = True
    for t in lockers:
        t.join(60)
    if poll:
        for _, w in pipes:
            os.write(w, b"x")
    else:
        for c in range(b.cpus):  # one sentinel fault per blocked reader
            libc.touch_read(b.sentinel.addr + c * memory.PAGE_SIZE)
    for t in handlers:
        t.join(60)
    for r, w in pipes:
        os.close(r)
        os.close(w)
    alive = [t.name for t in lockers + handlers + copiers if t.is_alive()]
    if alive:
        b.fail(f"threads still running: {alive}")


def verify(b: Bounce) -> list[int]:
    return [nr for nr in range(b.nr_pages)
            if support.read_count(b.dst.addr + nr * b.ps + support.COUNT_OFF) != b.count_verify[nr]]


def run_bounce(mt: MemType, npages: int, bounces: int = BOUNCES, handle=None) -> list[str]:
    """All bounces; returns a one-line summary per bounce (the errors raise)."""
    feats = mt.missing_feature
    wp_feats = mt.wp_feature
    avail = support.uffd_probe_features()
    wp = (avail & wp_feats) == wp_feats
    if wp:
        feats |= wp_feats
        if mt.anonymous and avail & abi.Feature.WP_UNPOPULATED:
            feats |= int(abi.Feature.WP_UNPOPULATED)
    cpus = nr_cpus()
    src, dst = map_area(mt, npages), map_area(mt, npages)
    sentinel = memory.anon(cpus * memory.PAGE_SIZE)
    count_verify = [1] * npages
    for nr in range(npages):
        support.write_count(src.addr + nr * mt.page_size + support.COUNT_OFF, 1)
    lines = []
    eexist = served = 0
    with open_for(feats, flags=abi.O_CLOEXEC) as u:
        for bounce in range(bounces - 1, -1, -1):
            fl = fcntl.fcntl(u.fd, fcntl.F_GETFL)
            fcntl.fcntl(u.fd, fcntl.F_SETFL, (fl | os.O_NONBLOCK) if bounce & BOUNCE_POLL else (fl & ~os.O_NONBLOCK))
            mode = abi.RegisterMode.MISSING | (abi.RegisterMode.WP if wp else 0)
            u.register(dst.addr, dst.size, mode)
            u.register(sentinel.addr, sentinel.size, abi.RegisterMode.MISSING)
            release(mt, dst)
            libc.madvise(sentinel.addr, sentinel.size, abi.Madv.DONTNEED)
            b = Bounce(u, src, dst, sentinel, count_verify, bounce, wp, cpus, handle=handle or handle_fault)
            stress(b, mt)
            if wp:
                u.writeprotect(dst.addr, dst.size, False)
            u.unregister(dst.addr, dst.size)
            u.unregister(sentinel.addr, sentinel.size)
            check.eq(b.errors, [], f"bounce {bounce} ({mode_name(bounce)})")
            bad = verify(b)
            check.eq(bad, [], f"bounce {bounce} ({mode_name(bounce)}): pages whose counter differs from count_verify")
            eexist += b.eexist_checked
            served += b.missing
            lines.append(f"bounce {bounce} ({mode_name(bounce)}): missing {b.missing} wp {b.wp_faults}")
            src, dst = dst, src
    for r in (src, dst, sentinel):
        r.close()
    check.ge(served, 1, "MISSING faults served by the handlers over all bounces")
    check.ge(eexist, 1, "UFFDIO_COPY re-copies proven to fail with EEXIST over all bounces")
    return lines


@pytest.mark.deadline(120)
@pytest.mark.parametrize("bm", MEMS, ids=[f"bounce on {m}" for m in MEMS])
def test_bounce(bm: BounceMem) -> None:
    mt = bm.mt
    support.need_type(mt, npages=2 * bm.nr_pages)
    if bm.nr_pages < nr_cpus():
        pytest.skip("fewer pages than CPUs")
    from lib.check import note

    for line in run_bounce(mt, bm.nr_pages):
        note(line)
