"""User-mode accesses that may die of a signal, judged by the signal (no compiled helper).

Upstream's mkdirty.c and guard-regions.c touch memory under a SIGSEGV handler that
siglongjmp()s back (tools/testing/selftests/mm/mkdirty.c do_test_write_sigsegv,
tools/testing/selftests/mm/guard-regions.c try_access_buf).  Python cannot resume after a
synchronous SIGSEGV, and a fork()ed child would not do: fork() write-protects every private
page table entry of the parent (copy-on-write), which hides exactly the writable-PTE bug
mkdirty.c looks for.  So the access runs in a task that shares this process's mm
(clone(CLONE_VM) without CLONE_THREAD): it sees the very page table entries of the caller,
and a fatal signal kills only that task, whose exit status names the signal.

The task runs one libc function and nothing else, never Python code:

* write: ``time(addr)`` stores the current time (8 bytes, never all zero) at ``addr`` in
  user mode (the vDSO's time() writes ``*tloc`` itself);
* read: ``atoi(addr)`` reads the byte at ``addr`` in user mode and stops at the first byte
  that is no blank, sign or digit (so a page of 0x00, 'x', or other non-digit bytes is read
  one byte deep).

SIGSEGV is put back to its default action around the clone() so the task inherits no
handler (pytest's faulthandler would otherwise run Python-level code in it).

An access that blocks (a userfault nobody resolves) is seen as the task still running at
the deadline, or as ``watch_fd`` becoming readable (the userfaultfd got a message): the
result says ``blocked`` and the task is killed.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass

from lib.kernel import abi, libc

STACK_SIZE = 64 * 1024

_clone = libc._fn("clone", ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_TIME = ctypes.cast(libc._libc.time, ctypes.c_void_p).value
_ATOI = ctypes.cast(libc._libc.atoi, ctypes.c_void_p).value


@dataclass(frozen=True)
class Access:
    """How one access ended: ``signal`` the signal that killed the task (None: it returned),
    ``blocked`` True when it did not finish by the deadline or a watched fd became readable."""

    write: bool
    addr: int
    signal: int | None
    blocked: bool = False
    watched: object = None  # what ``on_watch`` returned, read while the task was still blocked

    @property
    def ok(self) -> bool:
        return self.signal is None and not self.blocked

    @property
    def segv(self) -> bool:
        return self.signal == signal.SIGSEGV

    def __str__(self) -> str:
        what = f"{'write' if self.write else 'read'} at {self.addr:#x}"
        if self.blocked:
            return f"{what} blocked"
        if self.signal is None:
            return f"{what} succeeded"
        return f"{what} killed by {signal.Signals(self.signal).name}"


def _spawn(fn: int, addr: int) -> int:
    stack = libc.mmap(STACK_SIZE)
    old = abi.sigaction()
    try:
        libc.rt_sigaction(signal.SIGSEGV, abi.sigaction(), old)  # SIG_DFL, no flags, nothing masked
        try:
            pid = _clone(fn, stack + STACK_SIZE - 64, abi.CLONE_VM | signal.SIGCHLD, addr)
            err = ctypes.get_errno()
        finally:
            libc.rt_sigaction(signal.SIGSEGV, old)
        if pid < 0:
            raise OSError(err, f"clone(CLONE_VM): {os.strerror(err)}")
        return pid
    finally:
        # the task runs on this stack: it is unmapped only after the task is reaped
        _STACKS[stack] = STACK_SIZE


_STACKS: dict[int, int] = {}


def _release_stacks() -> None:
    for a, n in list(_STACKS.items()):
        try:
            libc.munmap(a, n)
        except OSError:
            pass
        del _STACKS[a]


def access(addr: int, write: bool, timeout: float = 10.0, watch_fd: int = -1,
           on_watch: Callable[[], object] | None = None) -> Access:
    """One user-mode read or write of ``addr`` by a task sharing this mm (see the module doc).

    ``on_watch`` runs when ``watch_fd`` became readable while the task is still blocked (a
    userfault's message is read before the task is killed, which would withdraw it)."""
    pid = _spawn(_TIME if write else _ATOI, addr)
    pidfd = libc.pidfd_open(pid)
    try:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        if watch_fd >= 0:
            p.register(watch_fd, select.POLLIN)
        events = dict(p.poll(int(timeout * 1000)))
        if pidfd not in events:
            try:
                seen = on_watch() if on_watch is not None and watch_fd in events else None
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            return Access(write, addr, None, blocked=True, watched=seen)
        _, status = os.waitpid(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return Access(write, addr, sig)
    finally:
        os.close(pidfd)
        _release_stacks()


def read(addr: int, **kw) -> Access:
    return access(addr, False, **kw)


def write(addr: int, **kw) -> Access:
    return access(addr, True, **kw)
