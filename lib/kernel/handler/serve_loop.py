"""The serve loop: :class:`FaultServer`, placement-independent (lib/kernel/handler/placements.py
puts it in a thread, a forked process or a spawned one).  What it does and why is told in
lib/kernel/handler/__init__.py; the fast lane for MISSING and WP faults is in fast_path.py.
"""

from __future__ import annotations

import errno
import itertools
import os
import queue
import select
import threading
import time
from collections.abc import Sequence

from lib.kernel import abi, libc
from lib.kernel.handler.fast_path import inline_resolver
from lib.kernel.handler.gate import RWLock
from lib.kernel.handler.messages import (
    BATCH,
    COPY_DONTWAKE,
    DISPATCHED,
    PAGEFAULT_NR,
    PF_MINOR,
    PF_WP,
    READ,
    REMOVE,
    REMOVE_NR,
    ZEROPAGE_DONTWAKE,
    Resolver,
    Words,
    fault_record,
    render_log,
)
from lib.kernel.handler.options import (
    AFTER_CHOOSE,
    AFTER_INSTALL,
    AFTER_MARK,
    AFTER_READ,
    AFTER_RELEASE,
    ANY_PAGE,
    BEFORE_LOCK,
    BEFORE_RESOLVE,
    CLEAN,
    DIRTY,
    LOOP_STEPS,
    REMOVED,
    STEPS,
    ZERO,
    Barrier,
    Options,
    Stats,
)
from lib.kernel.tasks import Deadline
from lib.kernel.uffd import MSG_SIZE, MSG_WORDS, Msg, UffdError, Userfaultfd

_INSTALLED, _EXISTS, _AGAIN = "installed", "exists", "again"  # _install's outcomes


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
                if type(e) is tuple and e[0] is DISPATCHED:
                    st.faults.append(fault_record(e[1]))
                log[i] = render_log(e)
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
                        if w[0] == REMOVE_NR:
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
        nbytes, unpack, unpack_one = MSG_SIZE * BATCH, MSG_WORDS.iter_unpack, MSG_WORDS.unpack
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
                    if w[0] == PAGEFAULT_NR and not w[1] & PF_MINOR:
                        log_append((READ, (w,)))
                        resolve(w)
                        continue
                    words = [w]
                else:
                    words = list(unpack(raw))
                    if len(words) == BATCH:
                        eager = True
                self._dispatch(u, words, resolve)


    def _dispatch(self, u: Userfaultfd, words: Sequence[Words], resolve: Resolver | None) -> None:
        """One read(2)'s messages: a batch of nothing but MISSING and WP faults goes to the inline
        resolver when there is one and no barrier is installed; any other batch to _batch."""
        if resolve and not self.barriers:
            for w in words:
                if w[0] != PAGEFAULT_NR or w[1] & PF_MINOR:
                    break
            else:
                self.stats.log.append((READ, words))
                for w in words:
                    resolve(w)
                return
        self._batch(u, words)

    def _batch(self, u: Userfaultfd, words: Sequence[Words]) -> None:
        """Handle the messages of one read(2), given as raw words (event, a, b, c): REMOVEs and
        other events first, in order, then the faults."""
        log_append = self.stats.log.append
        log_append((READ, words))
        faults = []
        for w in words:
            if w[0] == PAGEFAULT_NR:
                faults.append(w)
                continue
            m = Msg._from_words(*w)
            if m.event == REMOVE:
                self._apply_remove(m)
                log_append(f"applied {m}")
            else:
                self._apply_event(u, m)
        for w in faults:
            log_append((DISPATCHED, w))
            m = Msg._from_words(*w)
            if self.opt.workers:
                self._queue.put((u, m))
            else:
                self._resolve(u, m)

    def _inline_resolver(self, u: Userfaultfd) -> Resolver | None:
        """The fast lane for ``u`` (lib/kernel/handler/fast_path.py), or None when the options
        need the general path."""
        return inline_resolver(self, u)


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
            if flags & (PF_WP | PF_MINOR):
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
        counter, state = ("wp", DIRTY) if flags & PF_WP else ("minor", CLEAN)

        def ioctl(dontwake: bool) -> None:
            if flags & PF_WP:
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
                raw = os.read(u.fd, MSG_SIZE * BATCH)
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
                u.zeropage(addr, self.page_size, ZEROPAGE_DONTWAKE if dontwake else 0)
            else:
                u.copy(addr, src or self._zeros, self.page_size, mode | (COPY_DONTWAKE if dontwake else 0))
        except UffdError as e:
            if e.errno == errno.EEXIST:
                u.wake(addr, self.page_size)
                return _EXISTS
            if e.errno == errno.EAGAIN:
                return _AGAIN
            raise
        return _INSTALLED
