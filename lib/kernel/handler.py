"""Fault servers: the userfaultfd handler the cases talk to, in three placements.

* :class:`ThreadHandler`: the serve loop in a thread of the faulting process (uffd-unit-tests'
  poll thread).  The faulting side must touch memory only through lib.kernel.libc (docs/ARCHITECTURE.md rule 1).
* :class:`ProcessHandler`: the serve loop in a forked process.
* :class:`SpawnedHandler`: a fresh ``python -m lib.kernel.handler`` process that receives the uffd and
  the source memfd over a unix socket with SCM_RIGHTS, the way a VMM hands the uffd of a guest
  to its memory server (Firecracker, e2b).

All three expose one control interface (pause/resume, stats, barriers, stop).  The serve loop:

1. reads every pending message (up to 64) in one read(2) (reading is what releases a REMOVE
   waiter; it never waits for a worker that is *parked*, only for installs in flight);
2. marks the pages of the read's REMOVE events removed before anything else can choose a source
   (with worker threads: inside the read's side of the *install gate*, see below), then
   dispatches the batch's page faults, so a REMOVE is never overtaken by a fault read with it;
3. resolves each fault inline or on a worker thread: choose the source (zeros once the page was
   removed, else the source page), then UFFDIO_COPY (optionally COPY_MODE_WP), ZEROPAGE,
   CONTINUE or WRITEPROTECT, then book the page's state.  EEXIST wakes instead; EAGAIN (an event
   is pending, or read but its waiter has not yet run again) retries from the source choice
   after the serve loop's next read or a millisecond (an inline serve loop reads the pending
   event itself: nobody else would).

The REMOVE race (fs/userfaultfd.c userfaultfd_remove(), mm/madvise.c): madvise queues the
REMOVE and sleeps until it is *read*; from then on it zaps and returns, and a UFFDIO_COPY that
lands after the zap succeeds.  So a source chosen before the read must never be installed after
it.  Workers therefore choose and install inside the install gate (:class:`RWLock`, shared by
installs, taken exclusively by the serve loop around read(2) and the marking of the read's
REMOVE pages): an install either completes before the read (and madvise's zap, which comes
after the read, discards it) or chooses after the pages are marked.  An install in flight
delays the read by one ioctl; from 6.8 the kernel itself makes madvise wait for it
(ctx->map_changing_lock) before it even queues the REMOVE.  Barrier points and anything slow
(fetching the source page) stay outside the gate, so a parked worker never holds up madvise.
A removed mark is never cleared: after the REMOVE the page's content is zeros for good (the
source no longer describes it), and a mark cleared before an install lands would let a
concurrent fault for the same page pick the stale source (issue 13).  Only pages wholly inside
the range count: hugetlbfs MADV_REMOVE zeroes a partial head/tail page in place and keeps it
mapped.

Book-keeping never claims a state the kernel does not have, and a faulting thread that returns
already finds its page booked: the serve loop holds the statistics lock across the install
ioctl and its booking (one step for any observer, snapshot() included); a worker, or a fault
parked at a barrier, installs with DONTWAKE, books, then wakes the faulting thread (UFFDIO_WAKE).

The fault path is where the suite spends its handler time (bench/fault_service.py measures it
against a C handler doing the same job).  With no worker threads, no barrier and no negative
control, MISSING and WP faults go through a resolver closure built once per uffd
(:meth:`FaultServer._inline_resolver`): the same steps as the general path without the gate,
which only matters when workers run; tests/test_handler_fast_path.py keeps the two paths equal.
The serve loop polls, then reads, as uffd-unit-tests' poll thread does, and logs raw message
words that :meth:`FaultServer.snapshot` renders to text on demand.

Test hooks, at the named steps of :data:`STEPS`: a barrier (``install_barrier(page, step)``)
parks the thread serving a given page (the serve loop's own steps use page :data:`ANY_PAGE`)
until the test releases it: deterministic races without sleeps.  ``Options.step_delays``
injects a delay at a step, a perturbation for stress tests (never a synchronisation); the inline
resolver is built with the hooks only when delays are set, so it costs nothing otherwise.
Negative controls: ``wrong_source_before_lock`` chooses the source before the first barrier and
outside the gate (the stale-source race test must catch it); ``old_install_order`` restores the
ordering before issue 13 (no gate, removed mark cleared and fault booked before the ioctl).
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from lib.kernel import abi, libc
from lib.kernel.tasks import Deadline
from lib.kernel.uffd import MSG_SIZE, MSG_WORDS, Msg, UffdError, Userfaultfd

# Steps of the serve/install path (barrier points and delay points).  The fault path's, in order:
BEFORE_LOCK = "before_lock"  # the fault is in hand, before the install gate
BEFORE_RESOLVE = "before_resolve"  # about to fetch its source page (populate_buffers) and enter the gate
AFTER_CHOOSE = "after_choose"  # in the gate: source or zeros chosen, the install not yet issued
AFTER_INSTALL = "after_install"  # the install ioctl succeeded; not yet booked nor woken
AFTER_RELEASE = "after_release"  # a worker left the gate (workers only)
# the serve loop's (page ANY_PAGE); with workers both are inside the gate
AFTER_READ = "after_read"  # read(2) returned; the read's REMOVE pages not yet marked
AFTER_MARK = "after_mark"  # the read's REMOVE pages marked
FAULT_STEPS = (BEFORE_LOCK, BEFORE_RESOLVE, AFTER_CHOOSE, AFTER_INSTALL, AFTER_RELEASE)
LOOP_STEPS = (AFTER_READ, AFTER_MARK)
STEPS = FAULT_STEPS + LOOP_STEPS
ANY_PAGE = -1
GATED_STEPS = frozenset({AFTER_CHOOSE, AFTER_INSTALL, AFTER_READ, AFTER_MARK})


def parked_blocks_reads(step: str, options: Options) -> bool:
    """Whether a thread parked at ``step`` keeps the serve loop from reading the uffd (so a
    REMOVE queued meanwhile stays unread and madvise blocked): with workers, the steps inside
    the install gate; without, every step (the serve loop is the thread parked)."""
    if not options.workers:
        return True
    return step in GATED_STEPS and not options.old_install_order


CLEAN, DIRTY, ZERO, REMOVED = "clean", "dirty", "zero", "removed"

# enum members looked up once (an Enum attribute access costs more than the int compare)
_PAGEFAULT, _REMOVE = abi.Event.PAGEFAULT, abi.Event.REMOVE
_PAGEFAULT_NR, _REMOVE_NR = int(_PAGEFAULT), int(_REMOVE)
_PF_WRITE, _PF_WP, _PF_MINOR = int(abi.PagefaultFlag.WRITE), int(abi.PagefaultFlag.WP), int(abi.PagefaultFlag.MINOR)
_COPY_DONTWAKE, _ZEROPAGE_DONTWAKE = int(abi.CopyMode.DONTWAKE), abi.ZEROPAGE_MODE_DONTWAKE
_U32 = 0xFFFFFFFF
_BATCH = 64  # messages per read(2)
_INSTALLED, _EXISTS, _AGAIN = "installed", "exists", "again"  # _install's outcomes

# The fault path logs raw message words, rendered to text by FaultServer.snapshot():
# (_READ, [words, ...]) for a read(2), (_DISPATCHED, words) for a fault handed to resolution.
_READ, _DISPATCHED = "read", "dispatched"
Words = tuple[int, int, int, int]  # one uffd_msg as (event, three argument words): lib.kernel.uffd.MSG_WORDS
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
    old_install_order: bool = False  # negative control: the install ordering before issue 13
    ignore_remove: bool = False  # negative control: treat REMOVE as a no-op
    wrong_page: bool = False  # negative control: serve the next source page instead of the right one
    reject_write_missing: bool = False  # uffd-unit-tests: a MISSING fault must be a read
    follow_fork: bool = True  # serve the child's uffd from a FORK event as well
    # populate the zero buffer and each source page before UFFDIO_COPY: a hugetlb copy whose
    # source is not mapped in needs a second, unreserved huge page (mm/hugetlb.c bounce folio)
    populate_buffers: bool = False
    # test hook: seconds to stall at a step of STEPS (a perturbation, never a synchronisation)
    step_delays: dict[str, float] = field(default_factory=dict)


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
    """The install gate: many readers (installs) or one writer (the serve loop's read(2) and
    marking).  A waiting writer keeps new readers out, so a stream of installs (or a worker
    retrying after EAGAIN) cannot starve the read that the kernel waits for."""

    # The uncontended paths take only the plain mutex (a C-level context manager); the
    # condition variable is used, and notified, only when somebody waits.
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
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
            if self._writer or self._writers_waiting:
                self._wait_while(lambda: self._writer or self._writers_waiting)
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._waiting:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._mutex:
            if self._writer or self._readers:
                self._writers_waiting += 1
                try:
                    self._wait_while(lambda: self._writer or self._readers)
                finally:
                    self._writers_waiting -= 1
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
        self.gate = RWLock()
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
        unknown = set(opt.step_delays) - set(STEPS)
        if unknown:
            raise ValueError(f"step_delays: unknown steps {sorted(unknown)} (known: {', '.join(STEPS)})")
        self._delays = {k: float(v) for k, v in opt.step_delays.items()}
        self._stepping = bool(self._delays)
        # with workers, read(2) and the marking of its REMOVE pages take the install gate
        self._gated = bool(opt.workers) and not opt.old_install_order
        self._reads = 0  # gated reads done (a worker that met EAGAIN waits for the next one)
        self._read_cond = threading.Condition()
        # MISSING and WP faults go through _inline_resolver (no negative control, no workers)
        self._inline = not (opt.workers or opt.reject_write_missing or opt.wrong_page or opt.populate_buffers
                            or opt.wrong_source_before_lock or opt.old_install_order)
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
        with self._read_cond:
            self._read_cond.notify_all()
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
        and once, and each dispatched fault adds its ``stats.faults`` record.  Counters and
        states change only under ``state_lock`` (the inline resolver holds it across the install
        ioctl and its booking), so the copy is consistent with what the kernel was given."""
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

    def read_blocked(self) -> bool:
        """Whether the serve loop is waiting for installs in the gate before a read (tests:
        a worker held in the gate holds the read back)."""
        return bool(self.gate._writers_waiting)

    # -- barriers and step hooks ----------------------------------------------------------
    def install_barrier(self, page: int, point: str) -> int:
        """Park the next thread that reaches step ``point`` serving ``page`` (ANY_PAGE for the
        serve loop's own steps) until :meth:`release`.  One-shot."""
        if point not in STEPS:
            raise ValueError(f"unknown step {point!r} (known: {', '.join(STEPS)})")
        if point in LOOP_STEPS and not (self._gated or self._stepping):
            raise ValueError(f"a barrier at {point} needs workers or step_delays (the fast loop has no hook)")
        token = next(self._tokens)
        self.barriers[token] = Barrier(page, point)
        return token

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        if not self.barriers[token].arrived.wait(timeout):
            raise TimeoutError(f"no thread reached barrier {self.barriers[token].point} within {timeout}s")

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

    def _step(self, point: str, page: int) -> None:
        """A test hook at a named step: the injected delay, then a barrier for it, if any."""
        delay = self._delays.get(point)
        if delay:
            time.sleep(delay)  # a perturbation asked for by a test, never a synchronisation
        if self.barriers:
            self._hook(point, page)

    def _hooked(self) -> bool:
        return self._stepping or bool(self.barriers)

    # -- the loop -------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            self._serve()
        except Exception as e:
            with self.state_lock:
                self.stats.errors.append(f"serve loop: {type(e).__name__}: {e}")

    def _read_marking(self, fd: int, nbytes: int) -> bytes:
        """read(2) with the hooks, and with workers inside the install gate: the pages of the
        read's REMOVE events are marked before any install can choose a source again."""
        gated = self._gated
        if gated:
            self.gate.acquire_write()
        try:
            raw = os.read(fd, nbytes)  # BlockingIOError: nothing pending
            self._step(AFTER_READ, ANY_PAGE)
            if gated:
                if not self.opt.ignore_remove:
                    for w in MSG_WORDS.iter_unpack(raw):
                        if w[0] == _REMOVE_NR:
                            self._mark_removed(self._pages_within(w[1], w[2]))
                self._step(AFTER_MARK, ANY_PAGE)
                with self._read_cond:
                    self._reads += 1
                    self._read_cond.notify_all()
            return raw
        finally:
            if gated:
                self.gate.release_write()

    def _serve(self) -> None:
        # poll(2), then one read(2) per uffd, as uffd-unit-tests' poll thread does; after a read
        # that filled its buffer more messages are likely queued, so the next round reads first.
        poller, npolled = None, -1
        nbytes, unpack, unpack_one = MSG_SIZE * _BATCH, MSG_WORDS.iter_unpack, MSG_WORDS.unpack
        # with workers (the install gate) or step hooks, reads go through _read_marking
        read = self._read_marking if (self._gated or self._stepping) else os.read
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
        steps for the common case, made cheap: the options are looked at once, here; no gate
        (REMOVEs are marked by this same thread, so none lands between the source choice and
        the install); the statistics lock is held across the install ioctl and its booking, as
        on the general path when the serve loop resolves.  Failures are handled as there:
        EEXIST wakes, EAGAIN reads the pending event and retries (by _settle_missing), anything
        else is recorded.  With ``step_delays`` the ioctls are wrapped with the step hooks
        here, once; without, the closure calls the bare ioctls.  tests/test_handler_fast_path.py
        holds the two paths to the same ioctls, statistics, log and steps."""
        if not self._inline:
            return None
        ps = self.page_size
        stats = self.stats
        states, removed, log_append = stats.states, self.removed, stats.log.append
        zero_all = self.opt.zero or not self.source
        source, zeros = self.source, self._zeros
        mode_write, mode_read = self._copy_mode[True], self._copy_mode[False]
        zeropage = u.zeropage if self._use_zeropage else None
        copy, unprotect, wake = u.copy, u.writeprotect, u.wake
        lock = self.state_lock
        if self._stepping:
            copy, unprotect = self._stepped(copy), self._stepped(unprotect)
            zeropage = self._stepped(zeropage) if zeropage else None

        mask = -ps

        def resolve(w: Words) -> None:
            log_append((_DISPATCHED, w))
            flags = w[1]
            addr = w[2] & mask
            page = (addr - self.base) // ps
            failure: Exception
            if flags & _PF_WP:  # a write to a write-protected page: lift the protection
                with lock:
                    try:
                        unprotect(addr, ps, False)
                        states[page] = DIRTY
                        stats.wp += 1
                        return
                    except Exception as e:
                        failure = e
                self._fault_error(w[2], failure)
                return
            if flags & _PF_WRITE:
                state, mode = DIRTY, mode_write
            else:
                state, mode = CLEAN, mode_read
            if zero_all or page in removed:
                src, state = 0, ZERO
            else:
                src = source + page * ps
            with lock:
                try:
                    if src:
                        copy(addr, src, ps, mode)
                    elif zeropage and not mode:
                        zeropage(addr, ps)
                    else:
                        copy(addr, zeros, ps, mode)
                    states[page] = state
                    stats.missing += 1
                    return
                except UffdError as e:
                    failure = e
                    if e.errno == errno.EEXIST:  # installed meanwhile: wake the faulting thread
                        try:
                            wake(addr, ps)
                            stats.eexist += 1
                            stats.missing += 1
                            return
                        except Exception as e2:
                            failure = e2
                    elif e.errno == errno.EAGAIN:
                        stats.eagain += 1
                except Exception as e:
                    failure = e
            if isinstance(failure, UffdError) and failure.errno == errno.EAGAIN:
                # an event is pending: read it (nobody else will), then the general way
                self._read_pending(u)
                self._settle_missing(u, Msg._from_words(*w), addr, page, None)
            else:
                self._fault_error(w[2], failure)

        if self._stepping:
            step = self._step

            def resolve_stepped(w: Words) -> None:
                if not w[1] & _PF_WP:  # the general path's steps before the choice
                    page = ((w[2] & mask) - self.base) // ps
                    step(BEFORE_LOCK, page)
                    step(BEFORE_RESOLVE, page)
                resolve(w)

            return resolve_stepped
        return resolve

    def _stepped(self, ioctl: Callable) -> Callable:
        """An install ioctl wrapped with the steps around it (the inline resolver with hooks)."""
        step, ps = self._step, self.page_size

        def call(addr: int, *args):
            page = (addr - self.base) // ps
            step(AFTER_CHOOSE, page)
            r = ioctl(addr, *args)
            step(AFTER_INSTALL, page)
            return r

        return call

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
        """Record a REMOVE; mark its pages removed unless the (gated) read did already."""
        if not self.opt.ignore_remove and not self._gated:
            self._mark_removed(self._pages_within(m.start, m.end))
            if self._hooked():
                self._step(AFTER_MARK, ANY_PAGE)
        self._record(m)

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

    def _source_page(self, page: int) -> int:
        if self.opt.wrong_page:
            page = (page + 1) % (self.size // self.page_size)
        return self.source + page * self.page_size

    def _choose_source(self, page: int) -> tuple[int, str]:
        if self.opt.zero or page in self.removed or not self.source:
            return 0, ZERO
        return self._source_page(page), ""

    def _resolve(self, u: Userfaultfd, m: Msg) -> None:
        addr = m.address & ~(self.page_size - 1)
        page = (addr - self.base) // self.page_size
        flags = m.flags
        try:
            if flags & (_PF_WP | _PF_MINOR):
                self._resolve_protection(u, addr, page, flags)
                return
            if self.opt.reject_write_missing and m.is_write:
                raise AssertionError(f"MISSING fault at {m.address:#x} has the WRITE flag")
            if self.opt.old_install_order:
                self._resolve_old_order(u, m, addr, page)
                return
            # the negative control chooses where the buggy e2b serve loop did: before the
            # worker reaches its first barrier, outside the gate
            early = self._choose_source(page) if self.opt.wrong_source_before_lock else None
            hooked = self._hooked()
            if hooked:
                self._step(BEFORE_LOCK, page)
                self._step(BEFORE_RESOLVE, page)
            if self.opt.populate_buffers and self.source and not self.opt.zero and page not in self.removed:
                # fetch the source page (outside the gate: slow work never holds up a read;
                # after the barriers: a 1 GiB fetch takes seconds)
                libc.madvise(self._source_page(page), self.page_size, abi.Madv.POPULATE_READ)
        except Exception as e:
            self._fault_error(m.address, e)
            return
        self._settle_missing(u, m, addr, page, early)

    def _settle_missing(self, u: Userfaultfd, m: Msg, addr: int, page: int, early: tuple[int, str] | None) -> None:
        """Choose, install, book (the gate held with workers); after EAGAIN, again once the
        pending event has been read."""
        gate = self.gate if self._gated else None
        # the serve loop resolving holds the statistics lock across install and booking; a
        # worker (or a fault parked at a barrier) installs with DONTWAKE, books, then wakes
        wake_after = gate is not None or bool(self.barriers)
        try:
            while True:
                if gate:
                    gate.acquire_read()
                try:
                    seen = self._reads
                    src, kind = early or self._choose_source(page)
                    state = kind or (DIRTY if m.is_write else CLEAN)
                    if self._hooked():
                        self._step(AFTER_CHOOSE, page)
                    if wake_after:
                        outcome = self._install(u, addr, src, m.is_write, dontwake=True)
                        if outcome is _INSTALLED:
                            if self._hooked():
                                self._step(AFTER_INSTALL, page)
                            self._book(page, state)
                            u.wake(addr, self.page_size)
                        else:
                            self._count(outcome)
                    else:
                        with self.state_lock:
                            outcome = self._install(u, addr, src, m.is_write)
                            if outcome is _INSTALLED:
                                if self._hooked():
                                    self._step(AFTER_INSTALL, page)
                                self.stats.missing += 1
                                self.stats.states[page] = state
                            else:
                                self._count_locked(outcome)
                finally:
                    if gate:
                        gate.release_read()
                if gate and self._hooked():
                    self._step(AFTER_RELEASE, page)
                if outcome is not _AGAIN:
                    return
                early = None  # EAGAIN: an event is pending; choose again once it was read
                if self._stop:
                    raise RuntimeError("stopped while UFFDIO_COPY kept failing with EAGAIN")
                if gate:
                    self._wait_for_read(seen)
                else:
                    self._read_pending(u)
        except Exception as e:
            self._fault_error(m.address, e)

    def _wait_for_read(self, seen: int) -> None:
        """A worker after EAGAIN: wait for the serve loop's next read, or a millisecond.  EAGAIN
        means an event raised the kernel's mmap_changing, and it stays raised after the event
        was read until the woken madvise (or mremap, fork...) thread runs again and lowers it
        (fs/userfaultfd.c userfaultfd_event_wait_completion()), so no read may be coming: the
        worker retries either way (choosing again, inside the gate)."""
        with self._read_cond:
            if self._reads == seen and not self._stop:
                self._read_cond.wait(0.001)

    def _resolve_protection(self, u: Userfaultfd, addr: int, page: int, flags: int) -> None:
        """A WP fault (lift the protection) or a MINOR fault (UFFDIO_CONTINUE); booked as a
        MISSING install is (see _settle_missing)."""
        hooked = self._hooked()
        if hooked:
            self._step(AFTER_CHOOSE, page)
        counter, state = ("wp", DIRTY) if flags & _PF_WP else ("minor", CLEAN)

        def ioctl(dontwake: bool) -> None:
            if flags & _PF_WP:
                u.writeprotect(addr, self.page_size, False, dontwake=dontwake)
            else:
                mode = abi.ContinueMode.WP if self.opt.copy_mode_wp else 0
                u.cont(addr, self.page_size, mode | (abi.ContinueMode.DONTWAKE if dontwake else 0))

        if self._gated or self.barriers:
            ioctl(True)
            if hooked:
                self._step(AFTER_INSTALL, page)
            with self.state_lock:
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
                self.stats.states[page] = state
            u.wake(addr, self.page_size)
            return
        with self.state_lock:
            ioctl(False)
            if hooked:
                self._step(AFTER_INSTALL, page)
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.states[page] = state

    def _resolve_old_order(self, u: Userfaultfd, m: Msg, addr: int, page: int) -> None:
        """Negative control: the ordering before issue 13.  No gate: the source is chosen
        while a REMOVE may be read and zapped before the install lands; the removed mark is
        cleared and the fault booked *before* the ioctl (undone if it fails)."""
        hooked = self._hooked()
        if hooked:
            self._step(BEFORE_LOCK, page)
            self._step(BEFORE_RESOLVE, page)
        while True:
            src, kind = self._choose_source(page)
            with self.state_lock:
                self.stats.missing += 1
                prev = self.stats.states.get(page)
                self.stats.states[page] = kind or (DIRTY if m.is_write else CLEAN)
                was_removed = page in self.removed
                self.removed.discard(page)
            if hooked:
                self._step(AFTER_CHOOSE, page)
            if src and self.opt.populate_buffers:
                libc.madvise(src, self.page_size, abi.Madv.POPULATE_READ)
            outcome = self._install(u, addr, src, m.is_write)
            if outcome is _INSTALLED and hooked:
                self._step(AFTER_INSTALL, page)
            if outcome is not _AGAIN:
                if outcome is _EXISTS:
                    with self.state_lock:
                        self.stats.eexist += 1
                return
            with self.state_lock:
                self.stats.eagain += 1
                self.stats.missing -= 1
                if prev is None:
                    self.stats.states.pop(page, None)
                else:
                    self.stats.states[page] = prev
                if was_removed:
                    self.removed.add(page)
            if self._stop:
                raise RuntimeError("stopped while UFFDIO_COPY kept failing with EAGAIN")
            if not self.opt.workers:
                self._read_pending(u)

    def _fault_error(self, address: int, e: Exception) -> None:
        with self.state_lock:
            self.stats.errors.append(f"fault at {address:#x}: {type(e).__name__}: {e}")

    def _book(self, page: int, state: str) -> None:
        """A MISSING install the kernel has: count it and publish the page's state."""
        with self.state_lock:
            self.stats.missing += 1
            self.stats.states[page] = state

    def _count(self, outcome: str) -> None:
        with self.state_lock:
            self._count_locked(outcome)

    def _count_locked(self, outcome: str) -> None:
        """EEXIST (the page was there: the fault is resolved, its state is whoever installed
        it) or EAGAIN (not resolved yet)."""
        if outcome is _EXISTS:
            self.stats.eexist += 1
            self.stats.missing += 1
        else:
            self.stats.eagain += 1

    def _read_pending(self, u: Userfaultfd) -> None:
        """Inline serve loop, EAGAIN: the pending event can only be read here; read and handle it
        (faults read with it are resolved now, before the retry)."""
        if u.wait(0.001):
            try:
                raw = os.read(u.fd, MSG_SIZE * _BATCH)
            except BlockingIOError:
                return
            if self._hooked():
                self._step(AFTER_READ, ANY_PAGE)
            self._batch(u, list(MSG_WORDS.iter_unpack(raw)))

    def _install(self, u: Userfaultfd, addr: int, src: int, write: bool = False, dontwake: bool = False) -> str:
        """Install one page: _INSTALLED, _EXISTS (EEXIST: the page is there; its waiters are
        woken) or _AGAIN (EAGAIN: retry after the pending event is read).  Nothing is booked."""
        mode = self._copy_mode[write]
        try:
            if src == 0 and self._use_zeropage and not mode:
                u.zeropage(addr, self.page_size, _ZEROPAGE_DONTWAKE if dontwake else 0)
            else:
                u.copy(addr, src or self._zeros, self.page_size, mode | (_COPY_DONTWAKE if dontwake else 0))
        except UffdError as e:
            if e.errno == errno.EEXIST:
                u.wake(addr, self.page_size)
                return _EXISTS
            if e.errno == errno.EAGAIN:
                return _AGAIN
            raise
        return _INSTALLED


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

    def read_blocked(self) -> bool:
        return self.server.read_blocked()

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

    def read_blocked(self) -> bool:
        return self._call("read_blocked")

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
            elif op == "read_blocked":
                value = server.read_blocked()
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
        from lib.kernel.tasks import reap

        reap(self.pid, 10)


class SpawnedHandler(_RemoteHandler):
    """A separate ``python -m lib.kernel.handler`` process; the uffd travels by SCM_RIGHTS."""

    topology = "scm_rights"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.uffd, self.base, self.size, self.page_size = uffd, base, size, page_size
        self.source = source
        self.options = options or Options()

    def start(self) -> SpawnedHandler:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        self.proc = subprocess.Popen(
            # the running interpreter's own binary: always executable by us, whatever venv
            # symlink sys.executable names (the handler needs only the standard library)
            [os.readlink("/proc/self/exe"), "-m", "lib.kernel.handler", str(child.fileno())],
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
