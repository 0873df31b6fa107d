"""A thread that touches memory for a case: the faulting side of a userfaultfd case.

docs/ARCHITECTURE.md rule 1: registered memory is touched only through lib.kernel.libc, whose
primitives (read, write, touch_read, touch_write, madvise...) are ctypes calls that release the
GIL, so a thread blocked in a userfault (fs/userfaultfd.c handle_userfault()) or in madvise
waiting for its REMOVE to be read (userfaultfd_event_wait_completion()) never holds up the
Python thread that has to resolve it.

:class:`Toucher` runs such accesses on request, one at a time, and reports each one's end: its
result or the exception it raised, a done() check, deadline-bounded waits, and optionally a
pipe (:attr:`Toucher.done_fd`) to poll together with a uffd (is the access done, or did it
fault?).  Its kernel tid is known once the constructor returns, so a case can follow the thread's
state in /proc/<tid>/stat and wchan (lib.kernel.tasks): every wait ends at a state or a deadline,
never after a sleep.  A thread still runnable at a deadline was starved of CPU, which no kernel
guarantee bounds: lib.check.CannotTest; one still sleeping is a failure naming its state and wchan.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable

from lib.check import CannotTest
from lib.kernel import libc
from lib.kernel.tasks import Deadline, task_state, task_wchan, wait_until

# How long a step of a case's own threads may take (a thread starting, an access finishing or
# blocking).  Generous: a loaded host starves threads for seconds, and no kernel guarantee
# bounds that.
WAIT = 30.0
WCHAN_FAULT = "handle_userfault"  # where a thread blocked in a userfault sleeps


class Toucher:
    """A thread that runs memory accesses (callables using lib.kernel.libc) on request.

    ``Toucher.call(fn)`` runs one access and lets the thread end after it; ``Toucher()`` keeps
    the thread for a series of :meth:`submit` (or :meth:`touch_read`/:meth:`touch_write`) calls,
    one at a time, until :meth:`close`.  With ``pollable`` the end of each access also writes a
    byte to a pipe whose read end is :attr:`done_fd` (drained by :meth:`wait`).
    """

    def __init__(self, name: str = "toucher", pollable: bool = False, start_timeout: float = WAIT) -> None:
        self.name = name
        self.tid = 0
        self.result: object = None
        self.error: BaseException | None = None
        self._requests: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._submitted = self._completed = 0
        self._done_r = self._done_w = -1
        if pollable:
            self._done_r, self._done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        if not self._started.wait(start_timeout):
            raise CannotTest(f"{name}: thread did not start within {start_timeout:g}s")

    @classmethod
    def call(cls, fn: Callable[[], object], name: str = "toucher") -> Toucher:
        """A thread running ``fn`` once (it ends after it)."""
        t = cls(name)
        t.submit(fn)
        t._requests.put(None)
        return t

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        self.tid = libc.gettid()
        self._started.set()
        while True:
            fn = self._requests.get()
            if fn is None:
                return
            result, error = None, None
            try:
                result = fn()
            except BaseException as e:  # reported by join()
                error = e
            with self._cond:  # the pipe byte first: done() true means it is there to drain
                if self._done_w >= 0:
                    with contextlib.suppress(OSError):
                        os.write(self._done_w, b"d")
                self.result, self.error = result, error
                self._completed += 1
                self._cond.notify_all()

    # -- requests ----------------------------------------------------------------------------
    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the thread (the previous access must have ended)."""
        with self._cond:
            if self._submitted != self._completed:
                raise RuntimeError(f"{self.name}: an access is still running")
            self._drain()
            self.result, self.error = None, None
            self._submitted += 1
        self._requests.put(fn)

    def touch_read(self, addr: int) -> None:
        self.submit(lambda: libc.touch_read(addr))

    def touch_write(self, addr: int, value: int = 0) -> None:
        self.submit(lambda: libc.touch_write(addr, value & 0xFF))

    # -- observing ---------------------------------------------------------------------------
    @property
    def done_fd(self) -> int:
        """Readable once an access ended (a Toucher made with ``pollable=True``)."""
        if self._done_r < 0:
            raise RuntimeError(f"{self.name}: not pollable")
        return self._done_r

    def done(self) -> bool:
        """Whether the last access ended."""
        return self._completed == self._submitted

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the last access to end; whether it did."""
        with self._cond:
            ended = self._cond.wait_for(self.done, timeout)
        if ended:
            self._drain()
        return ended

    def _drain(self) -> None:
        if self._done_r >= 0:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._done_r, 64):
                    pass

    def join(self, timeout: float = WAIT) -> object:
        """The last access's result (its exception re-raised), once it ended within ``timeout``.
        Still runnable then: starved (CannotTest); still sleeping: a failure naming where."""
        if not self.wait(timeout):
            state = task_state(self.tid)
            if state == "R":
                raise CannotTest(f"{self.name} (tid {self.tid}) still running after {timeout:g}s")
            raise AssertionError(f"{self.name} (tid {self.tid}) still blocked after {timeout:g}s, state "
                                 f"{state} wchan {task_wchan(self.tid)}")
        if self.error is not None:
            raise self.error
        return self.result

    def blocked_in_userfault(self) -> bool:
        return task_state(self.tid) in ("D", "S") and "userfault" in task_wchan(self.tid)

    def settle(self, timeout: float = WAIT) -> bool:
        """Wait until the access ended (True) or the thread sleeps in a userfault (False), read
        from /proc/<tid>/stat and wchan.  Neither by ``timeout``: CannotTest (starved)."""
        d = Deadline(timeout)
        while True:
            if self.wait(0.002):
                return True
            if self.blocked_in_userfault():
                return False
            if d.expired():
                raise CannotTest(f"{self.name} (tid {self.tid}) neither finished its access nor blocked in a "
                                 f"userfault within {timeout:g}s (state {task_state(self.tid)!r})")

    def wait_blocked(self, wchan: str, timeout: float = WAIT) -> str:
        """Wait until the thread sleeps in ``wchan``; returns its /proc state letter.  An access
        that ends instead is a failure."""

        def blocked() -> str | None:
            if self.done():
                raise AssertionError(f"{self.name} finished instead of blocking in {wchan}")
            s, w = task_state(self.tid), task_wchan(self.tid)
            if s in ("D", "S") and (w == wchan or (w in ("0", "?", "-") and s == "D")):
                return s
            return None

        return str(wait_until(blocked, timeout, f"{self.name} (tid {self.tid}) blocked in {wchan}"))

    def close(self, timeout: float = WAIT) -> None:
        """End the thread once its access ended (bounded by ``timeout``) and close the pipe."""
        self._requests.put(None)
        self.thread.join(timeout)
        for fd in (self._done_r, self._done_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._done_r = self._done_w = -1
