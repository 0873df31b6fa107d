"""Unit tests of lib.kernel.handler's REMOVE bookkeeping (the fixes made for the REMOVE area).

Each test pins one rule of the serve loop that a case in cases/remove depends on; the
in-process ones drive FaultServer directly with a fake uffd, the others run a real uffd in an
isolated child with a deadline (a regression would hang, not fail).
"""

from __future__ import annotations

import errno
import os

from cases.remove.support import PAGE, WCHAN_EVENT, madvise_async, read_async
from lib.kernel import abi, memory, tasks
from lib.kernel.handler.options import BEFORE_RESOLVE, CLEAN, REMOVED, ZERO, Options
from lib.kernel.handler.serve_loop import FaultServer
from lib.kernel.handler.source import Source
from lib.kernel.serve import served
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import MSG_WORDS, Msg, UffdError
from lib.runner import isolation

BASE = 0x7F0000000000
SRC = 0x7E0000000000


class FakeUffd:
    """Records resolving ioctls (with their mode); never touches memory."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fd = -1
        self.features = 0

    def copy(self, dst, src, length, mode=0):
        self.calls.append(("copy", dst, src, length, mode))
        return length

    def zeropage(self, addr, length, mode=0):
        self.calls.append(("zeropage", addr, length, mode))
        return length

    def wake(self, addr, length):
        self.calls.append(("wake", addr, length))


def fault(page: int, ps: int = PAGE) -> Msg:
    return Msg(abi.Event.PAGEFAULT, address=BASE + page * ps + 8)


def remove(start: int, end: int) -> Msg:
    return Msg(abi.Event.REMOVE, start=BASE + start, end=BASE + end)


def server(npages: int = 4, ps: int = PAGE, **opts) -> tuple[FaultServer, FakeUffd]:
    u = FakeUffd()
    return FaultServer(u, BASE, npages * ps, ps, SRC, Options(**opts)), u


def test_removed_mark_outlives_the_install():
    """The removed mark is never cleared: after a zero install, a second fault for the page
    (a message queued while the first install was in flight) is still served zeros."""
    srv, u = server()
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    srv._resolve(u, fault(1))
    srv._resolve(u, fault(1))
    assert [c[0] for c in u.calls] == ["zeropage", "zeropage"] and 1 in srv.removed
    assert srv.stats.states[1] == ZERO


def test_booking_follows_the_install():
    """A fault is booked only once its install ioctl succeeded: a failing ioctl books nothing."""
    srv, u = server()

    def failing_copy(dst, src, length, mode=0):
        raise UffdError(errno.ENOENT, "UFFDIO_COPY", -errno.ENOENT)

    u.copy = failing_copy
    srv._resolve(u, fault(1))
    assert srv.stats.missing == 0 and 1 not in srv.stats.states and len(srv.stats.errors) == 1


def test_worker_books_before_it_wakes():
    """With workers the install is DONTWAKE, then the booking, then UFFDIO_WAKE: the faulting
    thread, once woken, finds its page booked."""
    srv, u = server(workers=1)
    seen = []
    wake = u.wake

    def wake_and_look(addr, length):
        seen.append(srv.stats.states.get(1))
        wake(addr, length)

    u.wake = wake_and_look
    srv._resolve(u, fault(1))
    assert u.calls[0][0] == "copy" and u.calls[0][4] & int(abi.CopyMode.DONTWAKE)
    assert seen == [CLEAN]


def test_old_order_control_clears_the_mark_and_books_first():
    """The negative control restores the pre-fix ordering: booked and unmarked before the ioctl."""
    srv, u = server(old_install_order=True, workers=1)
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    seen = []
    zeropage = u.zeropage

    def look(addr, length, mode=0):
        seen.append((srv.stats.missing, 1 in srv.removed))
        return zeropage(addr, length, mode)

    u.zeropage = look
    srv._resolve(u, fault(1))
    assert seen == [(1, False)]


def test_partial_pages_of_an_unaligned_remove_are_not_removed():
    """hugetlbfs MADV_REMOVE over an unaligned range discards only the whole pages inside it
    (the partial head/tail are zeroed in place and stay mapped)."""
    hp = 2 * 1024 * 1024
    srv, _ = server(4, hp)
    srv._apply_remove(remove(hp // 2, 2 * hp + hp // 2))
    assert srv.removed == {1}
    assert srv.stats.states == {1: REMOVED}


def test_aligned_remove_marks_every_page():
    srv, _ = server()
    srv._apply_remove(remove(PAGE, 3 * PAGE))
    assert srv.removed == {1, 2}


def test_wrong_source_is_chosen_before_the_first_barrier():
    """The negative-control handler picks the source before the before_lock barrier (as the
    buggy e2b serve loop did), so a REMOVE landing while it is parked there is missed."""
    srv, u = server(wrong_source_before_lock=True)
    tok = srv.install_barrier(1, "before_lock")
    t = Toucher.call(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    srv.release(tok)
    t.join(5)
    assert u.calls[0][:3] == ("copy", BASE + PAGE, SRC + PAGE), "stale source copied"


def test_correct_source_sees_a_remove_landing_before_the_lock():
    srv, u = server()
    tok = srv.install_barrier(1, "before_lock")
    t = Toucher.call(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    srv.release(tok)
    t.join(5)
    assert u.calls[0][0] == "zeropage"


def test_remove_read_while_a_worker_is_parked_before_the_gate_is_seen_by_its_choice():
    """A REMOVE read (and marked) while a worker is parked at before_resolve, outside the gate:
    the worker then chooses inside the gate and serves zeros."""
    srv, u = server(workers=1)
    tok = srv.install_barrier(1, "before_resolve")
    t = Toucher.call(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    gated_read_of_remove(srv, PAGE, 2 * PAGE)  # with workers the read marks the pages
    assert 1 in srv.removed
    srv.release(tok)
    t.join(5)
    assert u.calls[0][0] == "zeropage" and srv.stats.states[1] == ZERO


def gated_read_of_remove(srv: FaultServer, start: int, end: int) -> None:
    """The serve loop's read of one REMOVE message (from a pipe standing in for the uffd)."""
    r, w = os.pipe2(os.O_NONBLOCK)
    os.write(w, MSG_WORDS.pack(int(abi.Event.REMOVE), BASE + start, BASE + end, 0))
    srv._read_marking(r, 32)
    os.close(r)
    os.close(w)


def test_the_serve_loop_cannot_read_while_an_install_is_in_the_gate():
    """A worker parked at after_choose holds the gate: the serve loop's read (and marking)
    waits for it, so the choice it made cannot be overtaken by a REMOVE read meanwhile."""
    srv, u = server(workers=1)
    r, w = os.pipe2(os.O_NONBLOCK)
    os.write(w, bytes(32))  # one (empty) uffd_msg
    tok = srv.install_barrier(1, "after_choose")
    t = Toucher.call(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    reader = Toucher.call(lambda: srv._read_marking(r, 32), "serve loop")
    tasks.wait_until(lambda: srv.gate._writers_waiting == 1, 5, "the serve loop to wait for the gate")
    assert not reader.done()
    srv.release(tok)
    t.join(5)
    assert reader.join(5) == bytes(32)
    os.close(r)
    os.close(w)


def _inline_eagain() -> None:
    region = memory.anon(2 * PAGE)
    src = Source(region.size, pattern=7)
    with served(region, "thread", int(abi.Feature.EVENT_REMOVE), source=src, options=Options(workers=0)) as s:
        h = s.handler
        tok = h.install_barrier(1, BEFORE_RESOLVE)
        reader = read_async(region.page(1), 8)
        h.wait_held(tok, 5)
        mad = madvise_async(region.page(0), PAGE, abi.Madv.DONTNEED)
        mad.wait_blocked(WCHAN_EVENT)
        h.release(tok)
        reader.join(5)
        mad.join(5)
        st = h.stats()
    assert st.errors == []
    assert st.eagain >= 1, "the copy met the pending REMOVE"


def test_inline_serve_loop_reads_a_remove_that_makes_its_copy_fail_with_eagain():
    """workers=0: the serve loop itself resolves faults.  A REMOVE queued while it copies makes
    UFFDIO_COPY fail with EAGAIN until the message is read, and only the serve loop reads it:
    it must read pending events before retrying (it used to spin forever)."""
    o = isolation.run_isolated(_inline_eagain, 30)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"
