"""The uffd_ops area's oracles: one per kind of observation (docs/ARCHITECTURE.md rule 3).

* errno: :func:`expect_errno` runs an ioctl that must fail with a given errno and, where the
  ioctl has a result field (``copy``, ``zeropage``, ``mapped``, ``updated``, ``move``), checks the
  negative errno the kernel wrote there (include/uapi/linux/userfaultfd.h: "the kernel writes
  -errno in the result field").
* content: :func:`expect_content` compares what a user-mode access read with what was
  expected (the head and the tail of a page: enough to tell a stale or zero page from the copy).
* pagemap: :func:`expect_pagemap` checks PM_PRESENT, PM_UFFD_WP and PM_FILE of one entry
  (Documentation/admin-guide/mm/pagemap.rst).
* message: :func:`expect_access` checks what the next access did: completed without a
  userfault, or raised a userfault message with the given flags (MISSING: no flag; WP;
  MINOR) and the write bit.
* signal: :func:`expect_signal` checks how a child process that made the access ended (SIGBUS
  for a poisoned page).
* sleep: :func:`expect_asleep` checks that the task that made an access still sleeps in its
  userfault (/proc/<tid>/stat state S or D, wchan handle_userfault) and was not woken (a
  resolving ioctl with MODE_DONTWAKE, fs/userfaultfd.c: no wake_userfault()).

Each has a negative control in tests/test_uffd_ops_oracles.py.
"""

from __future__ import annotations

import errno as _errno
import signal as _signal
from collections.abc import Callable
from dataclasses import dataclass

from lib import check
from lib.check import CannotTest
from lib.kernel import abi
from lib.kernel.pagemap import Entry
from lib.kernel.tasks import ChildResult, task_state, task_wchan, wait_until
from lib.kernel.toucher import WCHAN_FAULT
from lib.kernel.uffd import Msg

SAMPLE = 64  # bytes compared at the head and at the tail of a page


def errno_value(name: str) -> int:
    return int(getattr(_errno, name))


def expect_errno(call: Callable[[], object], name: str, what: str, result: bool = True) -> None:
    """``call`` must fail with errno ``name``; with ``result``, the exception's result field
    (the kernel-written ``copy``/``zeropage``/...) must hold ``-errno``."""
    e = errno_value(name)
    with check.raises_errno(e, what) as caught:
        call()
    if result:
        check.eq(getattr(caught[0], "result", None), -e, f"{what}: the result field")


def sample(data: bytes, page_size: int) -> tuple[bytes, bytes]:
    return data[:SAMPLE], data[page_size - SAMPLE: page_size]


def expected_page(head: int, page_size: int, tail: int | None = None) -> bytes:
    """A page as the cases fill their sources: ``head`` in the first and ``tail`` (default
    ``head``) in the last SAMPLE bytes, zero in between (only those are compared)."""
    t = head if tail is None else tail
    return bytes([head]) * SAMPLE + bytes(page_size - 2 * SAMPLE) + bytes([t]) * SAMPLE


def expect_content(got: tuple[bytes, bytes], want: tuple[bytes, bytes], what: str) -> None:
    """The head and tail samples read from a page equal the expected ones."""
    check.eq(got[0], want[0], f"{what}: the first {SAMPLE} bytes")
    check.eq(got[1], want[1], f"{what}: the last {SAMPLE} bytes")


def expect_pagemap(e: Entry, what: str, present: bool | None = None, uffd_wp: bool | None = None,
                   file: bool | None = None) -> None:
    """The pagemap entry's bits: each given one must match (None: not checked)."""
    for bit, want, got in (("PM_PRESENT", present, e.present), ("PM_UFFD_WP", uffd_wp, e.uffd_wp),
                           ("PM_FILE", file, e.file)):
        if want is not None and got != want:
            raise AssertionError(f"{what}: {bit} expected {'set' if want else 'clear'}, "
                                 f"entry {e} ({e.raw:#x})")


@dataclass
class Access:
    """What one user-mode access did: ``msg`` is the userfault message it raised (None: it
    completed without one), ``data`` the bytes a completed read returned."""

    write: bool
    msg: Msg | None = None
    data: tuple[bytes, bytes] | None = None
    toucher: object | None = None  # the blocked access (a thread), while a userfault is unresolved

    def __str__(self) -> str:
        kind = "write" if self.write else "read"
        return f"{kind} raised {self.msg}" if self.msg else f"{kind} completed without a userfault"


FAULT_FLAGS = {"missing": 0, "wp": int(abi.PagefaultFlag.WP), "minor": int(abi.PagefaultFlag.MINOR)}


def expect_access(a: Access, fault: str | None, what: str) -> None:
    """``fault`` None: the access completed without a userfault; else it raised a PAGEFAULT
    message of that kind (``missing``, ``wp``, ``minor``) whose WRITE flag is the access's."""
    if fault is None:
        if a.msg is not None:
            raise AssertionError(f"{what}: expected no userfault, the {a}")
        return
    if a.msg is None:
        raise AssertionError(f"{what}: expected a {fault} userfault, the {a}")
    check.eq(a.msg.event, abi.Event.PAGEFAULT, f"{what}: message event")
    kind = a.msg.flags & (int(abi.PagefaultFlag.WP) | int(abi.PagefaultFlag.MINOR))
    if kind != FAULT_FLAGS[fault]:
        raise AssertionError(f"{what}: expected a {fault} userfault, the {a}")
    check.eq(a.msg.is_write, a.write, f"{what}: the message's WRITE flag")


def expect_signal(r: ChildResult, sig: int | None, what: str) -> None:
    """The child that made the access was killed by ``sig`` (None: it exited with 0)."""
    if sig is None:
        if r.signal is not None or r.exit_code != 0:
            raise AssertionError(f"{what}: expected a clean exit, {r.describe()}")
        return
    if r.signal != sig:
        raise AssertionError(f"{what}: expected {_signal.Signals(sig).name}, {r.describe()}")


def expect_asleep(tid: int, ended: Callable[[], bool], what: str, timeout: float = 10.0) -> str:
    """The task ``tid`` sleeps in its userfault: state S or D with wchan handle_userfault (D
    with no wchan shown counts too), reached within ``timeout``; returns the state letter.
    ``ended()`` true first (the access completed, the process exited or died) is a failure: it
    was woken.  Still running at the deadline: starved of CPU, CannotTest."""

    def asleep() -> str | None:
        if ended():
            raise AssertionError(f"{what}: the faulting task {tid} was woken: its access ended")
        s, w = task_state(tid), task_wchan(tid)
        if s in ("D", "S") and (w == WCHAN_FAULT or (w in ("0", "?", "-") and s == "D")):
            return s
        return None

    try:
        return str(wait_until(asleep, timeout, f"task {tid} asleep in {WCHAN_FAULT}"))
    except TimeoutError:
        s = task_state(tid)
        if s == "R":
            raise CannotTest(f"{what}: task {tid} still running after {timeout:g}s") from None
        raise AssertionError(f"{what}: the faulting task {tid} is not asleep in {WCHAN_FAULT} after {timeout:g}s "
                             f"(state {s or 'gone'}, wchan {task_wchan(tid)})") from None
