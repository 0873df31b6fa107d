"""Shared pieces of the write-protect area: uffd set-up, pagemap bit 57 per unit, and the
sync-WP round trip with its oracle (a plain function, so tests/ can feed it a bad resolver).

Semantics (Documentation/admin-guide/mm/userfaultfd.rst, "Write Protect Notifications"): a
write to a page protected with UFFDIO_WRITEPROTECT (mode WP) on a range registered with
UFFDIO_REGISTER_MODE_WP raises a UFFD_EVENT_PAGEFAULT with UFFD_PAGEFAULT_FLAG_WP (and
_WRITE); the writer sleeps until the monitor resolves it with UFFDIO_WRITEPROTECT mode 0,
which removes the protection and wakes it.  A read never faults.  /proc/pid/pagemap bit 57
(PM_UFFD_WP) shows the protection per page (Documentation/admin-guide/mm/pagemap.rst).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lib import check
from lib.kernel import abi, libc, tasks
from lib.kernel.memory import Region
from lib.kernel.pagemap import Pagemap
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import Msg, Userfaultfd, open_for

if TYPE_CHECKING:
    from cases.wp_async.backings import WpBacking


@contextlib.contextmanager
def wp_uffd(r: Region, features: int, mode: int = abi.RegisterMode.WP) -> Iterator[Userfaultfd]:
    """A uffd with ``features``, ``r`` registered in ``mode``; unregistered and closed after."""
    u = open_for(features)
    try:
        u.register(r.addr, r.size, mode)
        yield u
    finally:
        with contextlib.suppress(OSError):
            u.unregister(r.addr, r.size)
        u.close()


@contextlib.contextmanager
def protected(b: WpBacking, units: int, byte: int) -> Iterator[tuple[Region, Userfaultfd]]:
    """``units`` units of ``b`` mapped and filled with ``byte``, registered for WP
    (:func:`wp_uffd`) and write-protected whole (UFFDIO_WRITEPROTECT mode WP)."""
    r = b.map(units)
    b.populate(r, byte)
    with wp_uffd(r, b.wp_feature) as u:
        u.writeprotect(r.addr, r.size, True)
        yield r, u


def wp_bits(r: Region, unit: int, units: int | None = None, pid: int | str = "self") -> list[bool]:
    """pagemap bit 57 of the first base page of each unit."""
    n = r.size // unit if units is None else units
    with Pagemap(pid) as pm:
        return [e.uffd_wp for e in pm.entries(r.addr, n, unit)]


# ---------------------------------------------------------------------------------------
# threads that touch memory (lib.kernel.toucher: libc only, rule 1) with bounded waits


SETTLE_TIMEOUT = 120.0  # a generous bound for a thread to finish or block (lib.kernel.toucher.Toucher.settle)


def read_does_not_fault(u: Userfaultfd, addr: int, length: int) -> tuple[bool, list[Msg]]:
    """Read ``length`` bytes at ``addr`` from a thread; (finished without blocking in a
    userfault, messages raised)."""
    t = Toucher.call(lambda: libc.read(addr, length), "reader")
    finished = t.settle(SETTLE_TIMEOUT)
    msgs = u.read_msgs()
    if not finished:  # a fault is pending: release it so the case can end
        for m in msgs:
            u.writeprotect(m.address & ~(libc.PAGE_SIZE - 1), libc.PAGE_SIZE, False)
        t.wait(SETTLE_TIMEOUT)
    return finished, msgs


# ---------------------------------------------------------------------------------------
# the sync-WP round trip


def resolve_unprotect(u: Userfaultfd, addr: int, length: int) -> None:
    """The correct resolution: UFFDIO_WRITEPROTECT mode 0 (unprotects and wakes)."""
    u.writeprotect(addr, length, False)


@dataclass
class SyncObservation:
    fault: Msg | None = None
    writer_state: str = ""  # scheduler state of the writer while the fault was pending
    writer_done_early: bool = False  # the write finished before the monitor answered
    content_while_blocked: bytes = b""
    wp_while_blocked: bool = False
    writer_done: bool = False  # the write finished after the resolution
    refaults: list[Msg] = field(default_factory=list)  # messages after the resolution
    content_after: bytes = b""
    wp_after: bool = False


def sync_wp_write(
    u: Userfaultfd,
    addr: int,
    unit: int,
    data: bytes,
    resolve: Callable[[Userfaultfd, int, int], None] = resolve_unprotect,
    timeout: float = SETTLE_TIMEOUT,
) -> SyncObservation:
    """Write ``data`` at protected ``addr`` from a thread and answer the WP fault with ``resolve``.

    Waits follow the writer's state, not the clock: until a message is readable or the writer
    finished (before the resolution), then until the writer finished, a new message arrived, or
    the writer sits blocked in a userfault with nothing to read (after it).  ``timeout`` only
    bounds a starved thread, which is "cannot test"."""
    obs = SyncObservation()
    base = addr & ~(unit - 1)
    w = Toucher.call(lambda: libc.write(addr, data), "writer")
    d = tasks.Deadline(timeout)
    while not u.wait(0.002):
        if w.done():
            obs.writer_done_early = True
            return obs
        if d.expired():
            raise check.CannotTest(f"the writer neither faulted nor finished within {timeout:g}s")
    obs.fault = u.read_msgs(1)[0]
    obs.writer_state = tasks.wait_task_state(w.tid, "SD", timeout)
    obs.writer_done_early = w.done()
    obs.content_while_blocked = libc.read(addr, len(data))
    with Pagemap() as pm:
        obs.wp_while_blocked = pm.entry(addr).uffd_wp
    resolve(u, base, unit)
    d = tasks.Deadline(timeout)
    while True:
        if w.wait(0.002):
            break
        if u.wait(0):
            obs.refaults += u.read_msgs()
            break
        if (tasks.task_state(w.tid) in "DS" and "userfault" in tasks.task_wchan(w.tid) and not u.wait(0)
                and not w.done()):
            break  # still blocked in the fault with nothing to read: the resolution did not wake it
        if d.expired():
            raise check.CannotTest(f"the writer neither finished nor blocked again within {timeout:g}s")
    obs.writer_done = w.done()
    if not obs.writer_done:  # a bad resolver left it blocked: release it
        u.writeprotect(base, unit, False)
        w.wait(timeout)
    obs.refaults += u.read_msgs()
    obs.content_after = libc.read(addr, len(data))
    with Pagemap() as pm:
        obs.wp_after = pm.entry(addr).uffd_wp
    return obs


def check_sync_wp(obs: SyncObservation, addr: int, old: bytes, new: bytes) -> None:
    """The oracle of a sync WP write: one WP fault, writer blocked, lands after mode 0."""
    from lib import check

    check.true(obs.fault is not None, "a write to a protected page raises a uffd message")
    assert obs.fault is not None
    check.eq(obs.fault.event, abi.Event.PAGEFAULT, "message event")
    check.mask_has(obs.fault.flags, abi.PagefaultFlag.WP | abi.PagefaultFlag.WRITE, "fault flags (WP|WRITE)")
    check.eq(obs.fault.address & ~(libc.PAGE_SIZE - 1), addr & ~(libc.PAGE_SIZE - 1), "fault address")
    check.false(obs.writer_done_early, "writer finished before the fault was resolved")
    check.true(obs.writer_state in ("S", "D"), f"writer sleeps in the fault (state {obs.writer_state!r})")
    check.eq(obs.content_while_blocked, old, "memory while the writer is blocked (write must not land yet)")
    check.true(obs.wp_while_blocked, "pagemap bit 57 while the fault is pending")
    check.eq(obs.refaults, [], "messages after UFFDIO_WRITEPROTECT mode 0 (the writer must not refault)")
    check.true(obs.writer_done, "writer woken by the resolution")
    check.eq(obs.content_after, new, "the write landed after the resolution")
    check.false(obs.wp_after, "pagemap bit 57 after the resolution")


