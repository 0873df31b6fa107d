"""Unit tests of lib.handler's REMOVE bookkeeping (the fixes made for the REMOVE area).

Each test pins one rule of the serve loop that a case in cases/remove depends on; the
in-process ones drive FaultServer directly with a fake uffd, the others run a real uffd in an
isolated child with a deadline (a regression would hang, not fail).
"""

from __future__ import annotations

from cases.remove.common import PAGE, WCHAN_EVENT, Async, madvise_async, read_async
from lib import abi, child, memory
from lib.handler import BEFORE_RESOLVE, REMOVED, FaultServer, Options, Source
from lib.serve import served
from lib.uffd import Msg

BASE = 0x7F0000000000
SRC = 0x7E0000000000


class FakeUffd:
    """Records resolving ioctls; never touches memory."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fd = -1
        self.features = 0

    def copy(self, dst, src, length, mode=0):
        self.calls.append(("copy", dst, src, length))
        return length

    def zeropage(self, addr, length, mode=0):
        self.calls.append(("zeropage", addr, length))
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


def test_remove_after_install_is_not_lost():
    """A REMOVE applied right after a worker releases the settle lock must stick: the worker's
    own bookkeeping (state, removed set) is done before it releases the lock."""
    srv, u = server()
    release = srv.lock.release_read
    fired = []

    def release_then_remove():
        release()
        if not fired:
            fired.append(1)
            srv._apply_remove(remove(PAGE, 2 * PAGE))

    srv.lock.release_read = release_then_remove
    srv._resolve(u, fault(1))
    assert fired and srv.stats.states[1] == REMOVED and 1 in srv.removed
    srv.lock.release_read = release
    srv._resolve(u, fault(1))
    assert u.calls[-1][0] == "zeropage", "the next fault on the removed page is served with zeros"


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
    t = Async(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    srv.release(tok)
    t.join(5)
    assert u.calls[0][:3] == ("copy", BASE + PAGE, SRC + PAGE), "stale source copied"


def test_correct_source_sees_a_remove_landing_before_the_lock():
    srv, u = server()
    tok = srv.install_barrier(1, "before_lock")
    t = Async(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    srv._apply_remove(remove(PAGE, 2 * PAGE))
    srv.release(tok)
    t.join(5)
    assert u.calls[0][0] == "zeropage"


def test_remove_read_while_a_worker_holds_the_lock_is_seen_by_its_choice():
    """The REMOVE is marked when it is read, before the serve loop waits for the settle lock:
    a worker parked holding the lock (before choosing) then serves zeros."""
    srv, u = server()
    tok = srv.install_barrier(1, "before_resolve")
    t = Async(lambda: srv._resolve(u, fault(1)), "worker")
    srv.wait_held(tok, 5)
    applier = Async(lambda: srv._apply_remove(remove(PAGE, 2 * PAGE)), "serve loop")
    child.wait_until(lambda: 1 in srv.removed, 5, "the REMOVE to be marked")
    srv.release(tok)
    t.join(5)
    applier.join(5)
    assert u.calls[0][0] == "zeropage" and srv.stats.states[1] == REMOVED


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
    o = child.run_isolated(_inline_eagain, 30)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"
