"""Fault servers: the userfaultfd handler the cases talk to, in three placements.

* :class:`ThreadHandler`: the serve loop in a thread of the faulting process (uffd-unit-tests'
  poll thread).  The faulting side must touch memory only through lib.libc (DESIGN rule 1).
* :class:`ProcessHandler`: the serve loop in a forked process.
* :class:`SpawnedHandler`: a fresh ``python -m lib.handler`` process that receives the uffd and
  the source memfd over a unix socket with SCM_RIGHTS, the way a VMM hands the uffd of a guest
  to its memory server (Firecracker, e2b).

All three expose one control interface (pause/resume, stats, barriers, stop).  The serve loop:

1. reads every pending message (up to 64) in one read(2) (reading is what releases a REMOVE waiter, and it
   never waits for a lock a worker may hold: e2b's madvise-deadlock rule);
2. applies the batch's REMOVE events first (under the settle write lock), then dispatches the
   batch's page faults, so a REMOVE is never overtaken by a fault read in the same batch;
3. resolves each fault inline or on a worker thread: take the settle read lock, choose the
   source (zeros once the page was removed, else the source page), then UFFDIO_COPY (optionally
   COPY_MODE_WP), ZEROPAGE, CONTINUE or WRITEPROTECT, and records the page's state before it
   drops the lock.  EEXIST wakes instead; EAGAIN (a REMOVE is pending) drops the lock and
   retries from the source choice (an inline serve loop first reads the pending event itself:
   nobody else would).

A REMOVE marks its pages removed as soon as it is read (a choice made after the read serves
zeros), then again under the settle write lock (a worker that chose before the read may have
recorded the page as installed meanwhile).  Only pages wholly inside the range count: hugetlbfs
MADV_REMOVE zeroes a partial head/tail page in place and keeps it mapped.

The fault path is where the suite spends its handler time (bench/fault_service.py measures it
against a C handler doing the same job).  With no worker threads, no barrier and no negative
control, MISSING and WP faults go through a resolver closure built once per uffd
(:meth:`FaultServer._inline_resolver`): the same steps as the general path without its locks,
which only matter when workers run; tests/test_handler_fast_path.py keeps the two paths equal.
The serve loop polls, then reads, as uffd-unit-tests' poll thread does, and logs raw message
words that :meth:`FaultServer.snapshot` renders to text on demand.

Barrier points (``before_lock``, ``before_resolve``) park a worker serving a given page until
the test releases it: deterministic races without sleeps.  ``wrong_source_before_lock`` makes
the server choose the source before taking the lock, the bug the stale-source race test must
catch (its negative control).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from lib import abi, libc
from lib.child import Deadline
from lib.uffd import MSG_SIZE, MSG_WORDS, Msg, UffdError, Userfaultfd

BEFORE_LOCK = "before_lock"
BEFORE_RESOLVE = "before_resolve"

CLEAN, DIRTY, ZERO, REMOVED = "clean", "dirty", "zero", "removed"

# enum members looked up once (an Enum attribute access costs more than the int compare)
_PAGEFAULT, _REMOVE = abi.Event.PAGEFAULT, abi.Event.REMOVE
_PAGEFAULT_NR = int(_PAGEFAULT)
_PF_WRITE, _PF_WP, _PF_MINOR = int(abi.PagefaultFlag.WRITE), int(abi.PagefaultFlag.WP), int(abi.PagefaultFlag.MINOR)
_U32 = 0xFFFFFFFF
_BATCH = 64  # messages per read(2)

# The fault path logs raw message words, rendered to text by FaultServer.snapshot():
# (_READ, [words, ...]) for a read(2), (_DISPATCHED, words) for a fault handed to resolution.
_READ, _DISPATCHED = "read", "dispatched"
Words = tuple[int, int, int, int]  # one uffd_msg as (event, three argument words): lib.uffd.MSG_WORDS
Resolver = Callable[[Words], None]
DISPATCHED = _DISPATCHED  # for handlers written in tests (negative controls)


def _render_log(entry: str | tuple) -> str:
    """A log entry as text: a str as it is, a (_READ, words) or (_DISPATCHED, words) entry
    rendered from the message words."""
    if isinstance(entry, str):
        return entry
    kind, payload = entry
    if kind is _READ:
        return "read " + ", ".join(str(Msg._from_words(*w)) for w in payload)
    return f"dispatched {Msg._from_words(*payload)}"


def _fault_record(words: Words) -> dict:
    """Stats.faults' record of a page-fault message."""
    return {"address": words[2], "flags": words[1], "ptid": words[3] & _U32}


@dataclass
class Options:
    """How faults are resolved."""

    copy_mode_wp: bool = False  # install every page write-protected (e2b "always WP")
    copy_mode_wp_reads: bool = False  # install read faults write-protected, write faults not (e2b default)
    zero: bool = False  # serve every missing fault with zeros
    use_zeropage_ioctl: bool = True  # zeros via UFFDIO_ZEROPAGE (not on hugetlb)
    minor: bool = False  # resolve MINOR faults with UFFDIO_CONTINUE
    workers: int = 0  # 0: resolve in the serve loop; N: N worker threads
    wrong_source_before_lock: bool = False  # negative control for the stale-source race
    ignore_remove: bool = False  # negative control: treat REMOVE as a no-op
    wrong_page: bool = False  # negative control: serve the next source page instead of the right one
    reject_write_missing: bool = False  # uffd-unit-tests: a MISSING fault must be a read
    follow_fork: bool = True  # serve the child's uffd from a FORK event as well
    # populate the zero buffer and each source page before UFFDIO_COPY: a hugetlb copy whose
    # source is not mapped in needs a second, unreserved huge page (mm/hugetlb.c bounce folio)
    populate_buffers: bool = False


@dataclass
class Stats:
    missing: int = 0
    wp: int = 0
    minor: int = 0
    eexist: int = 0
    eagain: int = 0
    errors: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # every non-fault event, in order
    faults: list[dict] = field(default_factory=list)  # every fault message, in order
    states: dict[int, str] = field(default_factory=dict)  # page index -> state
    log: list[str] = field(default_factory=list)  # serve-loop order: read / applied / dispatched


class RWLock:
    """Many readers (workers) or one writer (REMOVE application)."""

    # The uncontended paths take only the plain mutex (a C-level context manager); the
    # condition variable is used, and notified, only when somebody waits.
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting = 0  # threads blocked in _cond.wait()

    def _wait_while(self, busy) -> None:
        self._waiting += 1
        try:
            while busy():
                self._cond.wait()
        finally:
            self._waiting -= 1

    def acquire_read(self) -> None:
        with self._mutex:
            if self._writer:
                self._wait_while(lambda: self._writer)
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._waiting:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._mutex:
            if self._writer or self._readers:
                self._wait_while(lambda: self._writer or self._readers)
            self._writer = True

    def release_write(self) -> None:
        with self._mutex:
            self._writer = False
            if self._waiting:
                self._cond.notify_all()


class Barrier:
    def __init__(self, page: int, point: str) -> None:
        self.page, self.point = page, point
        self.arrived = threading.Event()
        self.released = threading.Event()


class FaultServer:
    """The serve loop and its state; placement-independent."""

    def __init__(
        self,
        uffd: Userfaultfd,
        base: int,
        size: int,
        page_size: int,
        source: int = 0,
        options: Options | None = None,
    ) -> None:
        self.uffds = [uffd]
        self.base, self.size, self.page_size = base, size, page_size
        self.source = source
        self.opt = options or Options()
        self.stats = Stats()
        self.lock = RWLock()
        self.state_lock = threading.Lock()
        self.removed: set[int] = set()
        self.barriers: dict[int, Barrier] = {}
        self._tokens = itertools.count(1)
        self._ctl_r, self._ctl_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = False
        self._attention = False  # stop or pause requested: the serve loop's one check per round
        self._rendered = 0  # log entries rendered to text so far (see snapshot)
        self._pause_req = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._zeros = libc.mmap(page_size, abi.PROT_READ, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
        if self.opt.populate_buffers:
            libc.madvise(self._zeros, page_size, abi.Madv.POPULATE_READ)
        self._threads: list[threading.Thread] = []
        # the fault path's choices, made once
        opt = self.opt
        # MISSING and WP faults go through _inline_resolver (no negative control, no workers)
        self._inline = not (opt.workers or opt.reject_write_missing or opt.wrong_page or opt.populate_buffers
                            or opt.wrong_source_before_lock)
        self._use_zeropage = opt.use_zeropage_ioctl and page_size == libc.PAGE_SIZE
        wp = int(abi.CopyMode.WP)
        self._copy_mode = {True: wp if opt.copy_mode_wp else 0,  # by "is a write fault"
                           False: wp if opt.copy_mode_wp or opt.copy_mode_wp_reads else 0}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.opt.workers):
            t = threading.Thread(target=self._worker, name=f"uffd-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self.serve, name="uffd-serve", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> Stats:
        self._stop = self._attention = True
        self._resume.set()
        for b in list(self.barriers.values()):
            b.released.set()
        os.write(self._ctl_w, b"x")
        for _ in range(self.opt.workers):
            self._queue.put(None)
        d = Deadline(timeout)
        for t in self._threads:
            t.join(d.remaining())
        return self.snapshot()

    def pause(self, timeout: float = 10.0) -> None:
        """Stop reading the uffd; returns once the loop has stopped (events queue in the kernel)."""
        self._resume.clear()
        self._pause_req.set()
        self._attention = True
        os.write(self._ctl_w, b"p")
        if not self._paused.wait(timeout):
            raise TimeoutError("serve loop did not pause")

    def resume(self) -> None:
        self._pause_req.clear()
        self._attention = self._stop
        self._paused.clear()
        self._resume.set()

    def snapshot(self) -> Stats:
        """A copy of the statistics.  The serve loop appends raw entries to ``stats.log``
        without a lock (it is the log's only writer); they are rendered to text here, in place
        and once, and each dispatched fault adds its ``stats.faults`` record.  Counters are read
        before ``states``: the fault path publishes a page's state before its counter."""
        with self.state_lock:
            st = self.stats
            log, n = st.log, len(st.log)
            for i in range(self._rendered, n):
                e = log[i]
                if type(e) is tuple and e[0] is _DISPATCHED:
                    st.faults.append(_fault_record(e[1]))
                log[i] = _render_log(e)
            self._rendered = n
            return Stats(
                missing=st.missing, wp=st.wp, minor=st.minor, eexist=st.eexist, eagain=st.eagain,
                errors=list(st.errors), events=[dict(e) for e in st.events],
                faults=[dict(f) for f in st.faults], states=st.states.copy(), log=log[:n],
            )

    # -- barriers -------------------------------------------------------------------------
    def install_barrier(self, page: int, point: str) -> int:
        token = next(self._tokens)
        self.barriers[token] = Barrier(page, point)
        return token

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        if not self.barriers[token].arrived.wait(timeout):
            raise TimeoutError(f"no worker reached barrier {self.barriers[token].point} within {timeout}s")

    def release(self, token: int) -> None:
        self.barriers.pop(token).released.set()

    def _hook(self, point: str, page: int) -> None:
        if not self.barriers:
            return
        for b in list(self.barriers.values()):
            if b.point == point and b.page == page and not b.arrived.is_set():
                b.arrived.set()
                b.released.wait()
                return

    # -- the loop -------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            self._serve()
        except Exception as e:
            with self.state_lock:
                self.stats.errors.append(f"serve loop: {type(e).__name__}: {e}")

    def _serve(self) -> None:
        # poll(2), then one read(2) per uffd, as uffd-unit-tests' poll thread does; after a read
        # that filled its buffer more messages are likely queued, so the next round reads first.
        poller, npolled = None, -1
        read, nbytes, unpack, unpack_one = os.read, MSG_SIZE * _BATCH, MSG_WORDS.iter_unpack, MSG_WORDS.unpack
        log_append = self.stats.log.append
        ctl = self._ctl_r
        uffds = self.uffds  # only ever appended to (FORK events), so iterated as it is
        served: list[tuple[Userfaultfd, int, Resolver | None]] = []
        eager = False
        while True:
            if self._attention:
                if self._stop:
                    return
                if self._pause_req.is_set():
                    self._paused.set()
                    self._resume.wait()
                    continue
            if len(uffds) != npolled:
                poller, npolled = select.poll(), len(uffds)
                poller.register(ctl, select.POLLIN)
                for u in uffds:
                    poller.register(u.fd, select.POLLIN)
                served = [(u, u.fd, self._inline_resolver(u)) for u in uffds]
            if not eager:
                ready = poller.poll(1000)
                if not ready:
                    continue
                for fd, _ in ready:
                    if fd == ctl:
                        try:
                            os.read(ctl, 64)
                        except BlockingIOError:
                            pass
            eager = False
            for u, fd, resolve in served:
                if self._attention:
                    break
                try:
                    raw = read(fd, nbytes)  # O_NONBLOCK
                except BlockingIOError:
                    continue
                if len(raw) == MSG_SIZE and resolve is not None and not self.barriers:
                    # one message, the usual read under a single faulting thread: _dispatch's
                    # steps for it, written out
                    w = unpack_one(raw)
                    if w[0] == _PAGEFAULT_NR and not w[1] & _PF_MINOR:
                        log_append((_READ, (w,)))
                        resolve(w)
                        continue
                    words = [w]
                else:
                    words = list(unpack(raw))
                    if len(words) == _BATCH:
                        eager = True
                self._dispatch(u, words, resolve)

    def _dispatch(self, u: Userfaultfd, words: Sequence[Words], resolve: Resolver | None) -> None:
        """One read(2)'s messages: a batch of nothing but MISSING and WP faults goes to the inline
        resolver when there is one and no barrier is installed; any other batch to _batch."""
        if resolve and not self.barriers:
            for w in words:
                if w[0] != _PAGEFAULT_NR or w[1] & _PF_MINOR:
                    break
            else:
                self.stats.log.append((_READ, words))
                for w in words:
                    resolve(w)
                return
        self._batch(u, words)

    def _batch(self, u: Userfaultfd, words: Sequence[Words]) -> None:
        """Handle the messages of one read(2), given as raw words (event, a, b, c): REMOVEs and
        other events first, in order, then the faults."""
        log_append = self.stats.log.append
        log_append((_READ, words))
        faults = []
        for w in words:
            if w[0] == _PAGEFAULT_NR:
                faults.append(w)
                continue
            m = Msg._from_words(*w)
            if m.event == _REMOVE:
                self._apply_remove(m)
                log_append(f"applied {m}")
            else:
                self._apply_event(u, m)
        for w in faults:
            log_append((_DISPATCHED, w))
            m = Msg._from_words(*w)
            if self.opt.workers:
                self._queue.put((u, m))
            else:
                self._resolve(u, m)

    def _inline_resolver(self, u: Userfaultfd) -> Resolver | None:
        """The serve loop's resolver of MISSING and WP faults on ``u``, or None when the options
        need the general path (workers, negative controls).  It follows :meth:`_resolve`'s
        steps for the common case, made cheap: the options are looked at once, here; no settle
        lock (REMOVEs are applied by this same thread, so none lands between the source choice
        and the install); no state lock (this thread is then the only writer of the
        statistics, and a page's state is published before its counter, see snapshot).  Failures
        are handled as there: EEXIST wakes, EAGAIN reads the pending event and retries (by
        _resolve), anything else is undone and recorded.  tests/test_handler_fast_path.py holds
        the two paths to the same ioctls, statistics and log."""
        if not self._inline:
            return None
        ps = self.page_size
        stats = self.stats
        states, removed, log_append = stats.states, self.removed, stats.log.append
        zero_all = self.opt.zero or not self.source
        source, zeros = self.source, self._zeros
        mode_write, mode_read = self._copy_mode[True], self._copy_mode[False]
        zeropage = u.zeropage if self._use_zeropage else None
        copy = u.copy

        unprotect, wake = u.writeprotect, u.wake

        def undo(page: int, prev: str | None, counter: str) -> None:
            setattr(stats, counter, getattr(stats, counter) - 1)
            if prev is None:
                del states[page]
            else:
                states[page] = prev

        mask, states_get = -ps, states.get

        def resolve(w: Words) -> None:
            log_append((_DISPATCHED, w))
            flags = w[1]
            addr = w[2] & mask
            page = (addr - self.base) // ps
            prev = states_get(page)
            if flags & _PF_WP:  # a write to a write-protected page: lift the protection
                states[page] = DIRTY
                stats.wp += 1
                try:
                    unprotect(addr, ps, False)
                except Exception as e:
                    undo(page, prev, "wp")
                    self._fault_error(w[2], e)
                return
            if flags & _PF_WRITE:
                state, mode = DIRTY, mode_write
            else:
                state, mode = CLEAN, mode_read
            was_removed = page in removed
            if was_removed or zero_all:
                src, state = 0, ZERO
            else:
                src = source + page * ps
            states[page] = state
            stats.missing += 1
            if was_removed:
                removed.discard(page)
            try:
                if src:
                    copy(addr, src, ps, mode)
                elif zeropage and not mode:
                    zeropage(addr, ps)
                else:
                    copy(addr, zeros, ps, mode)
                return
            except UffdError as e:
                if e.errno == errno.EEXIST:  # installed meanwhile: wake the faulting thread
                    with self.state_lock:
                        stats.eexist += 1
                    try:
                        wake(addr, ps)
                        return
                    except Exception as e2:
                        failure: Exception = e2
                else:
                    failure = e
            except Exception as e:
                failure = e
            undo(page, prev, "missing")
            if was_removed:
                removed.add(page)
            if isinstance(failure, UffdError) and failure.errno == errno.EAGAIN:
                # a REMOVE is pending: read it (nobody else will), then the general way
                with self.state_lock:
                    stats.eagain += 1
                self._read_pending(u)
                self._resolve(u, Msg._from_words(*w))
            else:
                self._fault_error(w[2], failure)

        return resolve

    def _log(self, line: str | tuple) -> None:
        """Append a serve-loop line: a str, or a raw entry rendered by snapshot().  Only the
        serve loop writes the log, so no lock."""
        self.stats.log.append(line)

    def _record(self, m: Msg) -> None:
        d = {"event": m.event.name, "start": m.start, "end": m.end}
        if m.event == abi.Event.REMAP:
            d.update({"from": m.remap_from, "to": m.remap_to, "len": m.remap_len})
        if m.event == abi.Event.FORK:
            d["ufd"] = m.ufd
        with self.state_lock:
            self.stats.events.append(d)

    def _apply_remove(self, m: Msg) -> None:
        if self.opt.ignore_remove:
            self._record(m)
            return
        pages = self._pages_within(m.start, m.end)
        self._mark_removed(pages)  # at once: a source chosen after this read must be zeros
        self._record(m)
        self.lock.acquire_write()  # settle: wait out workers that chose before the read
        try:
            self._mark_removed(pages)  # again: such a worker may have recorded the page installed
        finally:
            self.lock.release_write()

    def _pages_within(self, start: int, end: int) -> range:
        """Pages wholly inside [start, end) (no partial page is discarded by the kernel)."""
        first = max(0, -(-(start - self.base) // self.page_size))
        last = min(self.size // self.page_size, (end - self.base) // self.page_size)
        return range(first, last)

    def _mark_removed(self, pages: range) -> None:
        with self.state_lock:
            for i in pages:
                self.removed.add(i)
                self.stats.states[i] = REMOVED

    def _apply_event(self, u: Userfaultfd, m: Msg) -> None:
        self._record(m)
        if m.event == abi.Event.FORK and self.opt.follow_fork:
            child = Userfaultfd(m.ufd)
            child.features = u.features
            self.uffds.append(child)
        elif m.event == abi.Event.REMAP and m.remap_from == self.base:
            self.base = m.remap_to

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._resolve(*item)

    def _choose_source(self, page: int) -> tuple[int, str]:
        if self.opt.zero or page in self.removed or not self.source:
            return 0, ZERO
        if self.opt.wrong_page:
            page = (page + 1) % (self.size // self.page_size)
        return self.source + page * self.page_size, ""

    def _resolve(self, u: Userfaultfd, m: Msg) -> None:
        addr = m.address & ~(self.page_size - 1)
        page = (addr - self.base) // self.page_size
        flags = m.flags
        try:
            # Book-keeping happens before the ioctl that wakes the faulting thread, so a
            # stats() taken right after the access already shows the page (it is undone if the
            # ioctl fails).
            if flags & _PF_WP:
                prev = self._book("wp", page, DIRTY)
                try:
                    u.writeprotect(addr, self.page_size, False)
                except BaseException:
                    self._unbook("wp", page, prev)
                    raise
                return
            if flags & _PF_MINOR:
                prev = self._book("minor", page, CLEAN)
                try:
                    u.cont(addr, self.page_size, abi.ContinueMode.WP if self.opt.copy_mode_wp else 0)
                except BaseException:
                    self._unbook("minor", page, prev)
                    raise
                return
            if self.opt.reject_write_missing and m.is_write:
                raise AssertionError(f"MISSING fault at {m.address:#x} has the WRITE flag")
            # the negative control chooses where the buggy e2b serve loop did: before the
            # worker reaches its first barrier and the settle lock
            early = self._choose_source(page) if self.opt.wrong_source_before_lock else None
            if self.barriers:
                self._hook(BEFORE_LOCK, page)
            while True:
                self.lock.acquire_read()
                try:
                    if self.barriers:
                        self._hook(BEFORE_RESOLVE, page)
                    src, kind = early or self._choose_source(page)
                    # book-keep under the settle lock (a REMOVE applied next must win) and
                    # before the install wakes the faulting thread
                    prev = self._book("missing", page, kind or (DIRTY if m.is_write else CLEAN))
                    was_removed = page in self.removed
                    self.removed.discard(page)
                    try:
                        done = self._install(u, addr, src, m.is_write)
                    except BaseException:
                        done = False
                        self._unbook("missing", page, prev, was_removed)
                        raise
                    if not done:
                        self._unbook("missing", page, prev, was_removed)
                finally:
                    self.lock.release_read()
                if done:
                    break
                early = None  # EAGAIN: a REMOVE is pending; choose again after it
                if self._stop:
                    raise RuntimeError("stopped while UFFDIO_COPY kept failing with EAGAIN")
                if not self.opt.workers:
                    self._read_pending(u)
        except Exception as e:
            self._fault_error(m.address, e)

    def _fault_error(self, address: int, e: Exception) -> None:
        with self.state_lock:
            self.stats.errors.append(f"fault at {address:#x}: {type(e).__name__}: {e}")

    def _book(self, counter: str, page: int, state: str) -> str | None:
        with self.state_lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            prev = self.stats.states.get(page)
            self.stats.states[page] = state
        return prev

    def _unbook(self, counter: str, page: int, prev: str | None, was_removed: bool = False) -> None:
        with self.state_lock:
            setattr(self.stats, counter, getattr(self.stats, counter) - 1)
            if prev is None:
                self.stats.states.pop(page, None)
            else:
                self.stats.states[page] = prev
            if was_removed:
                self.removed.add(page)

    def _read_pending(self, u: Userfaultfd) -> None:
        """Inline serve loop, EAGAIN: the pending event can only be read here; read and handle it
        (faults read with it are resolved now, before the retry)."""
        if u.wait(0.001):
            try:
                raw = os.read(u.fd, MSG_SIZE * _BATCH)
            except BlockingIOError:
                return
            self._batch(u, list(MSG_WORDS.iter_unpack(raw)))

    def _install(self, u: Userfaultfd, addr: int, src: int, write: bool = False) -> bool:
        """Install one page; False means EAGAIN (retry after the pending event is read)."""
        if src and self.opt.populate_buffers:
            libc.madvise(src, self.page_size, abi.Madv.POPULATE_READ)
        mode = self._copy_mode[write]
        try:
            if src == 0 and self._use_zeropage and not mode:
                u.zeropage(addr, self.page_size)
            else:
                u.copy(addr, src or self._zeros, self.page_size, mode)
        except UffdError as e:
            if e.errno == errno.EEXIST:
                with self.state_lock:
                    self.stats.eexist += 1
                u.wake(addr, self.page_size)
                return True
            if e.errno == errno.EAGAIN:
                with self.state_lock:
                    self.stats.eagain += 1
                return False
            raise
        return True


# ---------------------------------------------------------------------------------------
# the source: page contents the handler serves, in a memfd so another process can map it


class Source:
    """Page contents to serve, in a memfd mapped here (and mappable by a handler process)."""

    def __init__(self, size: int, content: bytes | None = None, pattern: int | None = None) -> None:
        self.size = size
        self.fd = libc.memfd_create("kmm-source")
        os.ftruncate(self.fd, size)
        self.addr = libc.mmap(size, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, self.fd)
        if content is not None:
            libc.write(self.addr, content[:size])
        elif pattern is not None:
            fill_pattern(self.addr, size, pattern)

    def page(self, i: int, page_size: int) -> bytes:
        return libc.read(self.addr + i * page_size, page_size)

    def close(self) -> None:
        libc.munmap(self.addr, self.size)
        os.close(self.fd)


def fill_pattern(addr: int, size: int, seed: int) -> None:
    """Fill with a per-4KiB-page recognisable pattern (page index and seed in every word)."""
    ps = libc.PAGE_SIZE
    for i in range(size // ps):
        word = ((seed & 0xFFFF) << 48 | (i & 0xFFFFFFFF)).to_bytes(8, "little")
        libc.write(addr + i * ps, word * (ps // 8))


# ---------------------------------------------------------------------------------------
# placements


class ThreadHandler:
    """Serve in a thread of this process."""

    topology = "thread"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.server = FaultServer(uffd, base, size, page_size, source.addr if source else 0, options)

    def start(self) -> ThreadHandler:
        self.server.start()
        return self

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def stats(self) -> Stats:
        return self.server.snapshot()

    def install_barrier(self, page: int, point: str) -> int:
        return self.server.install_barrier(page, point)

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        self.server.wait_held(token, timeout)

    def release(self, token: int) -> None:
        self.server.release(token)

    def stop(self) -> Stats:
        return self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _RemoteHandler:
    """Client side of a handler living in another process (JSON lines over a unix socket)."""

    topology = "remote"
    sock: socket.socket
    pid: int

    def _call(self, op: str, timeout: float = 15.0, **args):
        self.sock.settimeout(timeout)
        self.sock.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        line = self._rfile.readline()
        if not line:
            raise ConnectionError(f"handler process {self.pid} went away during {op}")
        reply = json.loads(line)
        if "error" in reply:
            kind = TimeoutError if reply.get("kind") == "TimeoutError" else RuntimeError
            raise kind(reply["error"])
        return reply.get("value")

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def stats(self) -> Stats:
        return _stats_from_json(self._call("stats"))

    def install_barrier(self, page: int, point: str) -> int:
        return self._call("install_barrier", page=page, point=point)

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        self._call("wait_held", timeout=timeout + 5, token=token, wait=timeout)

    def release(self, token: int) -> None:
        self._call("release", token=token)

    def stop(self) -> Stats:
        try:
            st = _stats_from_json(self._call("stop"))
        finally:
            self.sock.close()
            self._reap()
        return st

    def _reap(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock.fileno() >= 0:
            self.stop()


def _stats_from_json(d: dict) -> Stats:
    d["states"] = {int(k): v for k, v in d["states"].items()}
    return Stats(**d)


def _rpc_loop(conn: socket.socket, server: FaultServer) -> None:
    """Answer control requests until 'stop' or EOF (runs in the handler process)."""
    rfile = conn.makefile("rb")
    for line in rfile:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "pause":
                server.pause()
                value = None
            elif op == "resume":
                server.resume()
                value = None
            elif op == "stats":
                value = asdict(server.snapshot())
            elif op == "install_barrier":
                value = server.install_barrier(req["page"], req["point"])
            elif op == "wait_held":
                server.wait_held(req["token"], req["wait"])
                value = None
            elif op == "release":
                server.release(req["token"])
                value = None
            elif op == "stop":
                value = asdict(server.stop())
                conn.sendall((json.dumps({"value": value}) + "\n").encode())
                return
            else:
                raise ValueError(f"unknown op {op}")
            reply = {"value": value}
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}", "kind": type(e).__name__}
        conn.sendall((json.dumps(reply) + "\n").encode())
    server.stop()


class ProcessHandler(_RemoteHandler):
    """Serve in a forked process.  Start it before registering ranges (see module doc)."""

    topology = "process"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.args = (uffd, base, size, page_size, source.addr if source else 0, options)

    def start(self) -> ProcessHandler:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            parent.close()
            code = 0
            try:
                libc.set_pdeathsig()
                server = FaultServer(*self.args)
                server.start()
                _rpc_loop(child, server)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid, self.sock = pid, parent
        self._rfile = parent.makefile("rb")
        return self

    def _reap(self) -> None:
        from lib.child import reap

        reap(self.pid, 10)


class SpawnedHandler(_RemoteHandler):
    """A separate ``python -m lib.handler`` process; the uffd travels by SCM_RIGHTS."""

    topology = "scm_rights"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.uffd, self.base, self.size, self.page_size = uffd, base, size, page_size
        self.source = source
        self.options = options or Options()

    def start(self) -> SpawnedHandler:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        self.proc = subprocess.Popen(
            # the running interpreter's own binary: always executable by us, whatever venv
            # symlink sys.executable names (the handler needs only the standard library)
            [os.readlink("/proc/self/exe"), "-m", "lib.handler", str(child.fileno())],
            pass_fds=[child.fileno()], env=env, cwd=root,
        )
        child.close()
        self.pid, self.sock = self.proc.pid, parent
        self._rfile = parent.makefile("rb")
        boot = {
            "base": self.base, "size": self.size, "page_size": self.page_size,
            "features": self.uffd.features, "source_size": self.source.size if self.source else 0,
            "options": asdict(self.options),
        }
        fds = [self.uffd.fd] + ([self.source.fd] if self.source else [])
        socket.send_fds(parent, [(json.dumps(boot) + "\n").encode()], fds)
        self._call("stats", timeout=30)  # wait until it serves
        return self

    def _reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _spawned_main(sock_fd: int) -> None:
    """Entry point of a SpawnedHandler process."""
    libc.set_pdeathsig()
    conn = socket.socket(fileno=sock_fd)
    msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 2)
    boot = json.loads(msg.split(b"\n", 1)[0])
    uffd = Userfaultfd(fds[0])
    uffd.features = boot["features"]
    source = 0
    if boot["source_size"]:
        source = libc.mmap(boot["source_size"], abi.PROT_READ, abi.MAP_SHARED, fds[1])
    server = FaultServer(uffd, boot["base"], boot["size"], boot["page_size"], source, Options(**boot["options"]))
    server.start()
    _rpc_loop(conn, server)


TOPOLOGIES = {"thread": ThreadHandler, "process": ProcessHandler, "scm_rights": SpawnedHandler}


if __name__ == "__main__":
    _spawned_main(int(sys.argv[1]))
