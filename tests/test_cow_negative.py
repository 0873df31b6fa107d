"""Negative controls of the COW area: each oracle of cases/cow must be able to fail.

DESIGN rule 3: the COW checks run on MAP_SHARED memory (where a write by one process must be
seen by the other) must report a leak; a vmsplice() check that read the pipe before the
write would mask that leak, ours does not; a fixed buffer whose page the page table no
longer maps must be reported as an unreliable pin; the pagemap exclusivity check must
report a page that was not copied.  Every control runs isolated with a deadline.
"""

from __future__ import annotations

import os

import pytest

from cases.cow import oracles
from lib import abi, child, libc, memory, system
from lib.cow_backings import FILL, Snapshot
from lib.cow_iouring import IoUringUnavailable

PAGE = libc.PAGE_SIZE
SIZE = 4 * PAGE


def isolated(fn) -> None:
    """Run ``fn`` in a forked child with a deadline; its failure fails the test."""
    o = child.run_isolated(fn, 30, skip_types=(pytest.skip.Exception,))
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"


def shared_anon(size: int = SIZE) -> memory.Region:
    r = memory.anon(size, shared=True)
    libc.fill(r.addr, FILL, size)
    return r


def private_anon(size: int = SIZE) -> memory.Region:
    r = memory.anon(size)
    libc.fill(r.addr, FILL, size)
    return r


# ---------------------------------------------------------------------------------------
# A1-A4: the child checks, the parent modifies


@pytest.mark.parametrize("do_mprotect", [False, True])
def test_cow_in_parent_reports_leak_on_shared_memory(do_mprotect: bool) -> None:
    def body() -> None:
        r = shared_anon()
        assert oracles.cow_in_parent(r.addr, r.size, do_mprotect, expect=FILL) == oracles.LEAK_P2C

    isolated(body)


@pytest.mark.parametrize("do_mprotect", [False, True])
def test_cow_in_parent_passes_on_private_memory(do_mprotect: bool) -> None:
    def body() -> None:
        r = private_anon()
        assert oracles.cow_in_parent(r.addr, r.size, do_mprotect, expect=FILL) == ""

    isolated(body)


def test_fork_that_lost_the_content_is_reported() -> None:
    """The child must see the parent's content right after fork(): memory holding zeroes
    where 0x01 is expected stands for a fork() that dropped the private mapping."""

    def body() -> None:
        r = memory.anon(SIZE)
        libc.fill(r.addr, 0, SIZE)
        with pytest.raises(AssertionError, match="fork\\(\\) did not preserve"):
            oracles.cow_in_parent(r.addr, r.size, False, expect=FILL)
        with pytest.raises(AssertionError, match="fork\\(\\) did not preserve"):
            oracles.vmsplice_in_parent(r.addr, r.size, before_fork=False, expect=FILL)

    isolated(body)


# ---------------------------------------------------------------------------------------
# A3-A6: vmsplice()


@pytest.mark.parametrize("do_mprotect", [False, True])
def test_vmsplice_in_child_reports_leak_on_shared_memory(do_mprotect: bool) -> None:
    def body() -> None:
        r = shared_anon()
        got = oracles.cow_in_parent(r.addr, r.size, do_mprotect, oracles.child_vmsplice_memcmp, FILL)
        assert got == oracles.LEAK_P2C

    isolated(body)


def child_vmsplice_read_early(mem: int, size: int, comm: child.CommPipes, expect: int | None = None) -> bool:
    """A wrong vmsplice() check: it reads the pipe BEFORE the parent writes."""
    old = Snapshot.take(mem, size)
    r, w = os.pipe2(os.O_CLOEXEC)
    n = libc.vmsplice(w, mem, size)
    data = oracles.read_exact(r, n)  # too early: the write has not happened yet
    libc.munmap(mem, size)
    comm.child_ready.signal()
    comm.parent_ready.wait(oracles.TIMEOUT)
    return old.matches_bytes(data)


def test_vmsplice_reading_early_would_mask_the_leak_ours_does_not() -> None:
    """On MAP_SHARED memory the write must reach the pipe: a check that read the pipe
    before the write sees old data and passes (masks the leak); ours reports it."""

    def body() -> None:
        r = shared_anon()
        assert oracles.cow_in_parent(r.addr, r.size, False, child_vmsplice_read_early) == ""
        r2 = shared_anon()
        assert oracles.cow_in_parent(r2.addr, r2.size, False, oracles.child_vmsplice_memcmp) == oracles.LEAK_P2C

    isolated(body)


@pytest.mark.parametrize("before_fork", [True, False])
def test_vmsplice_in_parent_reports_leak_on_shared_memory(before_fork: bool) -> None:
    def body() -> None:
        r = shared_anon()
        assert oracles.vmsplice_in_parent(r.addr, r.size, before_fork, FILL) == oracles.LEAK_C2P

    isolated(body)


@pytest.mark.parametrize("before_fork", [True, False])
def test_vmsplice_in_parent_passes_on_private_memory(before_fork: bool) -> None:
    def body() -> None:
        r = private_anon()
        assert oracles.vmsplice_in_parent(r.addr, r.size, before_fork, FILL) == ""

    isolated(body)


# ---------------------------------------------------------------------------------------
# A7-A8: io_uring fixed buffers


@pytest.mark.parametrize("use_fork", [False, True])
def test_iouring_reports_a_pin_the_page_table_lost(use_fork: bool) -> None:
    """MADV_DONTNEED after the registration: the page table maps fresh pages while the pin
    keeps the old ones, so the file (written through the pin) differs from memory."""

    def body() -> None:
        r = private_anon()
        try:
            got = oracles.iouring(r.addr, r.size, use_fork,
                                  after_register=lambda: libc.madvise(r.addr, r.size, abi.Madv.DONTNEED))
        except IoUringUnavailable as e:
            pytest.skip(str(e))
        assert got == oracles.RW_PIN_UNRELIABLE

    isolated(body)


@pytest.mark.parametrize("use_fork", [False, True])
def test_iouring_passes_on_private_memory(use_fork: bool) -> None:
    def body() -> None:
        r = private_anon()
        try:
            assert oracles.iouring(r.addr, r.size, use_fork) == ""
        except IoUringUnavailable as e:
            pytest.skip(str(e))

    isolated(body)


def test_iouring_chunks_cover_small_buffers_whole_and_sample_large_ones() -> None:
    assert oracles.iouring_chunks(2 * system.MiB) == [(0, 2 * system.MiB)]
    chunks = oracles.iouring_chunks(system.GiB)
    assert chunks[0] == (0, system.MiB)
    assert chunks[-1] == (system.GiB - system.MiB, system.MiB)
    assert len(chunks) == 9


# ---------------------------------------------------------------------------------------
# N1: non-anonymous COW


def test_non_anon_cow_reports_a_shared_writable_mapping() -> None:
    """mem mapped MAP_SHARED (not private): the write shows in the other mapping."""

    def body() -> None:
        fd = libc.memfd_create("kmm-neg")
        os.ftruncate(fd, PAGE)
        mem = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, fd, 0)
        smem = libc.mmap(PAGE, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        assert oracles.non_anon_cow(mem, smem, PAGE) == oracles.OTHER_MODIFIED

    isolated(body)


def test_non_anon_cow_passes_on_a_private_mapping() -> None:
    def body() -> None:
        fd = libc.memfd_create("kmm-neg")
        os.ftruncate(fd, PAGE)
        mem = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_PRIVATE, fd, 0)
        smem = libc.mmap(PAGE, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        assert oracles.non_anon_cow(mem, smem, PAGE) == ""

    isolated(body)


# ---------------------------------------------------------------------------------------
# beyond cow.c: pagemap exclusivity


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_reports_a_page_that_was_not_copied() -> None:
    """MAP_SHARED anon: the write does not copy, so the writer keeps the PFN and the check
    must say so."""

    def body() -> None:
        r = shared_anon(PAGE)
        problems = oracles.exclusivity_problems(oracles.observe_cow(r.addr, PAGE))
        assert any("no copy was made" in p for p in problems), problems

    isolated(body)


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_passes_on_a_private_base_page() -> None:
    def body() -> None:
        r = memory.anon(PAGE)
        libc.madvise(r.addr, PAGE, abi.Madv.NOHUGEPAGE)
        libc.fill(r.addr, FILL, PAGE)
        assert oracles.exclusivity_problems(oracles.observe_cow(r.addr, PAGE)) == []

    isolated(body)


# ---------------------------------------------------------------------------------------
# ro_pin without gup_test


def test_ro_pin_skips_with_the_reason_without_gup_test() -> None:
    from lib.cow_gup import GupTest

    def body() -> None:
        r = private_anon()
        oracles.ro_pin(r.addr, r.size, oracles.RO_PIN_SHARED, False, GupTest(None, "gup_test not available: x"))

    o = child.run_isolated(body, 30, skip_types=(pytest.skip.Exception,))
    assert (o.kind, o.message) == ("skip", "gup_test not available: x")
