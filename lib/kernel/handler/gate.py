"""The install gate (see lib/kernel/handler/__init__.py, "The REMOVE race"): installs share it, the
serve loop takes it exclusively around read(2) and the marking of the read's REMOVE pages."""

from __future__ import annotations

import threading


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
