"""lib.kernel.toucher.Toucher (the thread every area touches registered memory from) and
lib.kernel.tasks.run_in_child: each verdict they give, including the failing ones.

A Toucher reading a MISSING-registered page that nobody serves sleeps in handle_userfault
(fs/userfaultfd.c; Documentation/admin-guide/mm/userfaultfd.rst): settle() must say "blocked",
join() must fail naming the state, and UFFDIO_ZEROPAGE must let the access end.
"""

from __future__ import annotations

import select

import pytest

from lib import check
from lib.kernel import abi, libc, tasks
from lib.kernel.toucher import WCHAN_FAULT, Toucher
from lib.kernel.uffd import open_for

PAGE = libc.PAGE_SIZE


@pytest.fixture
def unserved():
    """A MISSING-registered anon page and its uffd (nobody serves it)."""
    addr = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    u = open_for(0)
    u.register(addr, PAGE)
    try:
        yield u, addr
    finally:
        try:
            u.unregister(addr, PAGE)  # wakes a thread still blocked
        finally:
            u.close()
            libc.munmap(addr, PAGE)


def test_an_access_that_ends_reports_its_result():
    t = Toucher.call(lambda: 42, "answer")
    assert t.tid > 0
    assert t.join(5) == 42
    assert t.done()


def test_an_access_that_raises_is_reraised_by_join():
    t = Toucher.call(lambda: libc.madvise(0, PAGE, 12345), "bad madvise")
    with pytest.raises(OSError):
        t.join(5)


def test_a_thread_blocked_in_a_userfault_is_seen_blocked_and_join_fails(unserved):
    u, addr = unserved
    t = Toucher("reader", pollable=True)
    t.touch_read(addr)
    assert t.settle(10) is False
    assert t.wait_blocked(WCHAN_FAULT, 10) in ("S", "D")
    with pytest.raises(AssertionError, match=r"still blocked after .* wchan handle_userfault"):
        t.join(0.05)
    assert not select.select([t.done_fd], [], [], 0)[0]  # not done: nothing to poll
    m = u.read_msg(5)
    assert m.address & ~(PAGE - 1) == addr
    u.zeropage(addr, PAGE)
    assert t.join(10) == 0  # the zero page read back
    assert t.settle(1) is True
    t.touch_write(addr, 7)  # the page is there now: no fault
    assert t.wait(10)
    t.close()
    assert libc.read(addr, 1) == b"\x07"


def test_wait_blocked_fails_when_the_access_ends_instead():
    t = Toucher.call(lambda: None, "quick")
    t.wait(5)
    with pytest.raises(AssertionError, match="finished instead of blocking"):
        t.wait_blocked(WCHAN_FAULT, 5)


def test_one_access_at_a_time(unserved):
    u, addr = unserved
    t = Toucher("reader")
    t.touch_read(addr)
    t.wait_blocked(WCHAN_FAULT, 10)
    with pytest.raises(RuntimeError, match="still running"):
        t.touch_read(addr)
    u.read_msg(5)
    u.zeropage(addr, PAGE)
    t.join(10)
    t.close()


def _raise(e: BaseException):
    def fn() -> None:
        raise e

    return fn


def test_run_in_child_relays_each_verdict():
    tasks.run_in_child(lambda: None, 10)
    with pytest.raises(AssertionError, match="in the child: bad"):
        tasks.run_in_child(_raise(AssertionError("bad")), 10)
    with pytest.raises(AssertionError, match="in the child: ValueError: odd"):
        tasks.run_in_child(_raise(ValueError("odd")), 10)
    with pytest.raises(check.CannotTest, match="in the child: starved"):
        tasks.run_in_child(_raise(check.CannotTest("starved")), 10)
    skipped: list[str] = []
    tasks.run_in_child(lambda: pytest.skip("no such page size"), 10, (pytest.skip.Exception,), skipped.append)
    assert skipped == ["no such page size"]
    with pytest.raises(AssertionError, match="in the child: no verdict within"):
        tasks.run_in_child(lambda: select.select([], [], [], 30), 0.5)
