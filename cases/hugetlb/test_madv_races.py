"""hugetlb faults racing MADV_DONTNEED: hugetlb_fault_after_madv.c and hugetlb_madv_vs_map.c.

Both upstream programs need "one and only one" free huge page, so that the page a fault
allocates after MADV_DONTNEED is the very page the discard just freed.  Here the pool may hold
more (it is grown for the run); every unreserved page but one is reserved by a blocker mapping
made first, which leaves the case the same single page.  Surplus pages are turned off for the
case (nr_overcommit_hugepages 0, restored after it), as they are where upstream runs.

Each iteration maps one private anonymous huge page and releases two (three) threads at once
from a barrier (every wait bounded):

* hugetlb_fault_after_madv: one thread writes '.' to the page INLOOP times while the other
  discards it with MADV_DONTNEED INLOOP times.  A fault racing the discard must neither crash
  the kernel (upstream's comment: reproduced on 6.4 within about 1000 iterations) nor SIGBUS
  the writer (the page is there to reuse).  The byte left is '.' or 0.
* hugetlb_madv_vs_map: the same, plus a thread that maps another huge page INLOOP times: it
  must always fail (ENOMEM), because the case's page stays reserved while MADV_DONTNEED flips
  it between used and reserved ("Unexpected huge page allocation" otherwise; upstream's
  comment: reproduced on 6.7 within about 10 iterations); the first page must stay usable (its
  comment: touching it after such an allocation raises SIGBUS).

After every iteration, and at the end with the blocker gone too, the pool's counters are what
they were before (cases.hugetlb.oracles.pool_restored).  A SIGBUS or any other signal kills the
case, which the runner reports as a failure naming it; a kernel splat fails it too.
Reference: tools/testing/selftests/mm/hugetlb_fault_after_madv.c,
tools/testing/selftests/mm/hugetlb_madv_vs_map.c.
"""

from __future__ import annotations

import errno
import threading

import pytest

from cases.hugetlb import oracles
from lib import check
from lib.kernel import abi, hugetlb_pool, libc, memtypes, system
from lib.kernel.memtypes import MemType

INLOOP = 100  # upstream's INLOOP_ITER
WAIT = 30.0  # barrier waits


def iterations(size: int) -> tuple[int, int]:
    """(outer iterations, inner loop) bounded so a case takes a second or two: a 1 GiB page is
    zeroed at every fault after a discard."""
    return (3, 5) if size >= system.GiB else (300, INLOOP)


SIZES = [MemType(memtypes.HUGETLB_ANON, s, pages=1) for s in memtypes.hugetlb_sizes_default_first()]


@pytest.fixture
def no_overcommit(settings, mem: MemType) -> None:
    """No surplus huge pages for the case's size (upstream's setup has none)."""
    if mem.size in system.hugetlb_sizes():
        settings.set(system.hugetlb_path(mem.size, "nr_overcommit_hugepages"), 0)


def _map_one(size: int, pages: int = 1) -> int:
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.huge_size_flag(size)
    return libc.mmap(pages * size, abi.PROT_READ | abi.PROT_WRITE, flags)


class Race:
    """Worker threads released together per iteration; their errors are collected."""

    def __init__(self, jobs: list) -> None:
        self.jobs = jobs
        self.start = threading.Barrier(len(jobs) + 1, timeout=WAIT)
        self.end = threading.Barrier(len(jobs) + 1, timeout=WAIT)
        self.ptr = 0
        self.stop = False
        self.errors: list[str] = []
        self.results: list[object] = [None] * len(jobs)
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(len(jobs))]
        for t in self.threads:
            t.start()

    def _loop(self, i: int) -> None:
        while True:
            try:
                self.start.wait()
            except threading.BrokenBarrierError:
                return
            if self.stop:
                return
            try:
                self.results[i] = self.jobs[i](self.ptr)
            except Exception as e:
                self.errors.append(f"{self.jobs[i].__name__}: {e}")
            try:
                self.end.wait()
            except threading.BrokenBarrierError:
                return

    def run(self, ptr: int) -> None:
        self.ptr = ptr
        self.results = [None] * len(self.jobs)
        try:
            self.start.wait()
            self.end.wait()
        except threading.BrokenBarrierError:
            raise check.CannotTest(f"the race's threads did not meet within {WAIT}s") from None

    def close(self) -> None:
        self.stop = True
        self.start.abort()
        self.end.abort()
        for t in self.threads:
            t.join(WAIT)


def _setup(mem: MemType) -> tuple[oracles.Counters, int, int]:
    """The pool before, and a blocker reserving every unreserved page but one: (counters,
    blocker address, blocker pages)."""
    mem.require(pages=1)
    before = oracles.counters(mem.size)
    spare = hugetlb_pool.available(mem.size) - 1
    blocker = _map_one(mem.size, spare) if spare > 0 else 0
    check.eq(hugetlb_pool.available(mem.size), 1, f"free unreserved pages with the blocker mapped "
             f"({hugetlb_pool.read(mem.size)})")
    return before, blocker, spare


def _teardown(mem: MemType, before: oracles.Counters, blocker: int, spare: int) -> None:
    if blocker:
        libc.munmap(blocker, spare * mem.size)
    oracles.pool_restored(before, oracles.counters(mem.size), "at the end, the blocker unmapped")


def _race(mem: MemType, with_map_extra: bool) -> None:
    size = mem.size
    outer, inloop = iterations(size)
    before, blocker, spare = _setup(mem)
    in_loop = oracles.counters(size)

    def touch(ptr: int) -> None:
        for _ in range(inloop):
            libc.touch_write(ptr, ord("."))

    def madv(ptr: int) -> None:
        for _ in range(inloop):
            libc.madvise(ptr, size, abi.Madv.DONTNEED)

    def map_extra(ptr: int) -> int:
        for _ in range(inloop):
            try:
                extra = _map_one(size)
            except OSError as e:
                if e.errno != errno.ENOMEM:
                    raise
                continue
            libc.munmap(extra, size)
            return extra
        return 0

    jobs = [madv, touch] + ([map_extra] if with_map_extra else [])
    race = Race(jobs)
    try:
        for i in range(outer):
            check.note(f"iteration {i + 1} of {outer}")
            ptr = _map_one(size)
            race.run(ptr)
            if race.errors:
                raise AssertionError(f"iteration {i + 1}: {race.errors[0]}")
            if with_map_extra and race.results[2]:
                raise AssertionError(f"Unexpected huge page allocation (iteration {i + 1}): a second "
                                     f"{system.size_label(size)} page was mapped while the only free one "
                                     "was reserved by the case's mapping")
            oracles.byte_is_one_of(ptr, b".\0", f"iteration {i + 1}: the byte the writes and discards left")
            libc.touch_write(ptr, ord("1"))  # hugetlb_madv_vs_map: touching the page must not SIGBUS
            libc.munmap(ptr, size)
            oracles.pool_restored(in_loop, oracles.counters(size), f"after iteration {i + 1}")
    finally:
        race.close()
    check.diag(f"{outer} iterations of {inloop} writes/discards{' and maps' if with_map_extra else ''}")
    _teardown(mem, before, blocker, spare)


def cases(name: str):
    return pytest.mark.parametrize("mem", SIZES, ids=[f"{name} on {m}" for m in SIZES])


@cases("hugetlb_fault_after_madv")
def test_hugetlb_fault_after_madv(mem: MemType, no_overcommit: None) -> None:
    _race(mem, with_map_extra=False)


@cases("hugetlb_madv_vs_map: No unexpected huge page allocations")
def test_hugetlb_madv_vs_map(mem: MemType, no_overcommit: None) -> None:
    _race(mem, with_map_extra=True)
