"""rmap.c's process tree: every process of a fork() tree maps one page; one worker changes
where it lives; every other process must then map it where the worker sees it.

propagate_children (tools/testing/selftests/mm/rmap.c): a tree TOTAL_LEVEL deep, each process
with 1..MAX_CHILDREN children; one process on the worker's path at ``worker_level`` is the
worker.  Every process holds the write end of a "created" pipe and closes it once it forked
its own children, so the worker reading end-of-file knows the whole tree exists (rmap.c's
pipe).  The worker runs ``work`` and publishes the PFN it sees in a shared page; a "done"
pipe (rmap.c's semaphore) then lets every process run ``check``.  Every wait has a deadline.
The tree's shape comes from a fixed seed, so a run is repeatable (rmap.c seeds with time()).

Verdict: each process exits 0 (its check held), FAIL_ON_CHECK or FAIL_ON_WORK, ORed up the
tree as in rmap.c; the caller gets the OR and the number of processes that took part.
"""

from __future__ import annotations

import ctypes
import os
import random
import select
import struct
from collections.abc import Callable
from dataclasses import dataclass

from lib.kernel import libc, memory

TOTAL_LEVEL = 5
MAX_CHILDREN = 3
FAIL_ON_CHECK = 1 << 0
FAIL_ON_WORK = 1 << 1
WAIT = 60.0  # seconds any process of the tree waits for another


@dataclass
class Shared:
    """A MAP_SHARED page all processes see: expected PFN (u64) and process count (u64)."""

    region: memory.Region

    @property
    def expected_pfn(self) -> int:
        return struct.unpack("<Q", libc.read(self.region.addr, 8))[0]

    @expected_pfn.setter
    def expected_pfn(self, v: int) -> None:
        libc.write(self.region.addr, struct.pack("<Q", v))

    def count_in(self) -> None:
        """One more process (an atomic add in the shared page)."""
        p = ctypes.cast(self.region.addr + 8, ctypes.POINTER(ctypes.c_uint64))
        _atomic_add(p)

    @property
    def processes(self) -> int:
        return struct.unpack("<Q", libc.read(self.region.addr + 8, 8))[0]


_lock_fd: list[int] = []


def _atomic_add(p) -> None:
    # processes are forked: serialise through a pipe used as a lock token
    r, w = _lock_fd
    os.read(r, 1)
    p[0] += 1
    os.write(w, b"x")


@dataclass
class TreeResult:
    status: int  # OR of every process's verdict bits
    processes: int
    worker_level: int
    error: str = ""  # what went wrong in the root process itself


def _wait_readable(fd: int, what: str) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP)
    if not p.poll(int(WAIT * 1000)):
        raise TimeoutError(f"{what}: nothing within {WAIT}s")


def propagate_children(seed: int, prepare: Callable[[], None] | None, work: Callable[[Shared], int],
                       check: Callable[[Shared], int]) -> TreeResult:
    """Run rmap.c's tree from this process (the root); returns the ORed verdict bits."""
    rnd = random.Random(seed)
    worker_level = rnd.randrange(TOTAL_LEVEL) + 1
    shared = Shared(memory.anon(libc.PAGE_SIZE, shared=True))
    created_r, created_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    lock_r, lock_w = os.pipe2(os.O_CLOEXEC)
    os.write(lock_w, b"x")
    _lock_fd[:] = [lock_r, lock_w]
    root = os.getpid()
    level, is_worker, children = 1, True, []
    while True:
        n = rnd.randrange(MAX_CHILDREN) + 1
        worker_child = rnd.randrange(n) if is_worker else -1
        forked_into = None
        for c in range(n):
            pid = os.fork()
            if pid == 0:
                forked_into = c
                break
            children.append(pid)
        if forked_into is None:
            break
        # in a new child: descend
        children = []
        level += 1
        if forked_into != worker_child:
            is_worker = False
        rnd.seed(rnd.random() + forked_into)
        if level == TOTAL_LEVEL:
            break
    status, error = 0, ""
    try:
        shared.count_in()
        if prepare:
            prepare()
        os.close(created_w)
        if is_worker and level == worker_level:
            while True:  # end of file: every process of the tree exists
                _wait_readable(created_r, "the tree's processes")
                if not os.read(created_r, 64):
                    break
            try:
                status |= work(shared)
            finally:
                os.write(done_w, b"d")
        else:
            _wait_readable(done_r, "the worker")
            status |= check(shared)
    except Exception as e:
        status |= FAIL_ON_CHECK
        error = f"{type(e).__name__}: {e}"
    for pid in children:
        try:
            _, st = os.waitpid(pid, 0)
            if os.WIFEXITED(st):
                status |= os.WEXITSTATUS(st)
            else:
                status |= FAIL_ON_CHECK
        except ChildProcessError:
            status |= FAIL_ON_CHECK
    if os.getpid() != root:
        os._exit(status)
    for fd in (created_r, done_r, done_w, lock_r, lock_w):
        os.close(fd)
    n = shared.processes
    shared.region.close()
    return TreeResult(status, n, worker_level, error)
