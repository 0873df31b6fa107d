"""Negative controls of the COW area: each oracle of cases/cow must be able to fail.

docs/ARCHITECTURE.md rule 3: the COW checks run on MAP_SHARED memory (where a write by one process must be
seen by the other) must report a leak; a vmsplice() check that read the pipe before the
write would mask that leak, ours does not; a fixed buffer whose page the page table no
longer maps must be reported as an unreliable pin; the pagemap exclusivity check must
report a page that was not copied.  Every control runs isolated with a deadline.
"""

from __future__ import annotations

import errno
import os

import pytest

from cases.cow import oracles
from cases.cow.backings import FILL, Snapshot
from lib.kernel import abi, iouring, libc, memory, system, tasks
from lib.kernel.iouring import IoUringUnavailable
from lib.kernel.pagemap import Entry
from lib.runner import isolation
from tests.controls import passes

PAGE = libc.PAGE_SIZE
SIZE = 4 * PAGE




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

    passes(body, 30.0)


@pytest.mark.parametrize("do_mprotect", [False, True])
def test_cow_in_parent_passes_on_private_memory(do_mprotect: bool) -> None:
    def body() -> None:
        r = private_anon()
        assert oracles.cow_in_parent(r.addr, r.size, do_mprotect, expect=FILL) == ""

    passes(body, 30.0)


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

    passes(body, 30.0)


# ---------------------------------------------------------------------------------------
# A3-A6: vmsplice()


@pytest.mark.parametrize("do_mprotect", [False, True])
def test_vmsplice_in_child_reports_leak_on_shared_memory(do_mprotect: bool) -> None:
    def body() -> None:
        r = shared_anon()
        got = oracles.cow_in_parent(r.addr, r.size, do_mprotect, oracles.child_vmsplice_memcmp, FILL)
        assert got == oracles.LEAK_P2C

    passes(body, 30.0)


def child_vmsplice_read_early(mem: int, size: int, comm: tasks.CommPipes, expect: int | None = None) -> bool:
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

    passes(body, 30.0)


@pytest.mark.parametrize("before_fork", [True, False])
def test_vmsplice_in_parent_reports_leak_on_shared_memory(before_fork: bool) -> None:
    def body() -> None:
        r = shared_anon()
        assert oracles.vmsplice_in_parent(r.addr, r.size, before_fork, FILL) == oracles.LEAK_C2P

    passes(body, 30.0)


@pytest.mark.parametrize("before_fork", [True, False])
def test_vmsplice_in_parent_passes_on_private_memory(before_fork: bool) -> None:
    def body() -> None:
        r = private_anon()
        assert oracles.vmsplice_in_parent(r.addr, r.size, before_fork, FILL) == ""

    passes(body, 30.0)


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

    passes(body, 30.0)


@pytest.mark.parametrize("use_fork", [False, True])
def test_iouring_passes_on_private_memory(use_fork: bool) -> None:
    def body() -> None:
        r = private_anon()
        try:
            assert oracles.iouring(r.addr, r.size, use_fork) == ""
        except IoUringUnavailable as e:
            pytest.skip(str(e))

    passes(body, 30.0)


def _refused_register(err: int, no_cap: bool) -> None:
    """oracles.iouring_or_skip with io_uring_register_buffers() refused with ``err``."""
    import resource

    from lib.kernel import caps

    def refuse(self, addr: int, size: int) -> None:
        raise OSError(err, os.strerror(err))

    iouring.Ring.register_buffer = refuse
    if no_cap:
        caps.has = lambda cap: False
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]))
    r = private_anon()
    oracles.iouring_or_skip(r.addr, r.size, use_fork=False)


@pytest.mark.parametrize("err,no_cap,kind", [
    (errno.EFAULT, False, "fail"), (errno.ENOMEM, False, "fail"), (errno.EFAULT, True, "fail"),
    (errno.ENOMEM, True, "skip"), (errno.EPERM, True, "skip")],
    ids=["EFAULT", "ENOMEM with CAP_IPC_LOCK", "EFAULT without CAP_IPC_LOCK", "ENOMEM under RLIMIT_MEMLOCK",
         "EPERM under RLIMIT_MEMLOCK"])
def test_iouring_register_refusal_is_a_failure_unless_memlock(err: int, no_cap: bool, kind: str) -> None:
    """The registration is the longterm pin under test: only RLIMIT_MEMLOCK (a limit, for a
    process without CAP_IPC_LOCK) may turn its refusal into a skip."""
    try:
        cow_iouring_ring_ok()
    except IoUringUnavailable as e:
        pytest.skip(str(e))
    o = isolation.run_isolated(lambda: _refused_register(err, no_cap), 30, skip_types=(pytest.skip.Exception,))
    assert o.kind == kind, f"{o.kind}: {o.message}"
    if kind == "fail":
        assert o.message.startswith("setup step failed: io_uring_register_buffers()"), o.message


def cow_iouring_ring_ok() -> None:
    with iouring.Ring():
        pass


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

    passes(body, 30.0)


def test_non_anon_cow_passes_on_a_private_mapping() -> None:
    def body() -> None:
        fd = libc.memfd_create("kmm-neg")
        os.ftruncate(fd, PAGE)
        mem = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_PRIVATE, fd, 0)
        smem = libc.mmap(PAGE, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        assert oracles.non_anon_cow(mem, smem, PAGE) == ""

    passes(body, 30.0)


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

    passes(body, 30.0)


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_passes_on_a_private_base_page() -> None:
    def body() -> None:
        r = memory.anon(PAGE)
        libc.madvise(r.addr, PAGE, abi.Madv.NOHUGEPAGE)
        libc.fill(r.addr, FILL, PAGE)
        assert oracles.exclusivity_problems(oracles.observe_cow(r.addr, PAGE)) == []

    passes(body, 30.0)


THP_SIZE = 2 * 1024 * 1024


def private_thp_range(size: int = THP_SIZE) -> int:
    """A private anonymous range of ``size`` aligned to it, MADV_HUGEPAGE, written: a THP
    where the kernel gives one, base pages otherwise (the oracle holds for both)."""
    r = memory.anon(2 * size)
    mem = (r.addr + size) & ~(size - 1)
    try:
        libc.madvise(mem, size, abi.Madv.HUGEPAGE)
    except OSError:
        pass
    libc.fill(mem, FILL, size)
    return mem


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_reports_every_page_of_a_shared_range() -> None:
    """MAP_SHARED over 2 MiB: no page is copied, the writer keeps every PFN; fork() did not
    share the pages COW: the other process has not faulted them in, its entries are not
    present (reported right after fork() and after the write)."""

    def body() -> None:
        r = shared_anon(THP_SIZE)
        problems = oracles.exclusivity_problems(oracles.observe_cow(r.addr, THP_SIZE))
        text = "; ".join(problems)
        n = THP_SIZE // PAGE
        assert f"PFN unchanged on {n} of {n} pages" in text, problems
        assert f"right after fork(), other: expected present, not exclusive; {n} of {n}" in text, problems
        assert f"after the COW fault, other: expected present with the original PFN; {n} of {n}" in text, problems

    passes(body, 30.0)


def entry(pfn: int | None, exclusive: bool) -> Entry:
    raw = (abi.PM_PRESENT | pfn) if pfn is not None else 0
    return Entry(raw | (abi.PM_MMAP_EXCLUSIVE if exclusive else 0))


def test_exclusivity_check_reports_a_writer_sharing_the_other_process_pfn() -> None:
    """Constructed observation: the writer's PFN changed but is the one the other process
    now maps (the other was moved instead of the writer): both must not hold one page."""
    obs = oracles.CowObservation(
        before=[entry(0x100, True)],
        forked_writer=[entry(0x100, False)], forked_other=[entry(0x100, False)],
        cow_writer=[entry(0x200, True)], cow_other=[entry(0x200, True)])
    problems = oracles.exclusivity_problems(obs)
    vs = "after the COW fault, writer vs other: expected a PFN other than"
    assert any(p.startswith(vs) for p in problems), problems
    assert any(p.startswith("after the COW fault, other: expected present with the original PFN") for p in problems)
    good = oracles.CowObservation(obs.before, obs.forked_writer, obs.forked_other,
                                  [entry(0x200, True)], [entry(0x100, True)])
    assert oracles.exclusivity_problems(good) == []


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_reports_a_cow_that_did_not_happen() -> None:
    """A private (THP-advised) range the writer does not write after fork(): no page is
    copied, so the writer keeps the original PFNs, not exclusive, and the other process's
    pages stay shared (not exclusive) too."""

    def body() -> None:
        mem = private_thp_range()
        problems = oracles.exclusivity_problems(oracles.observe_cow(mem, THP_SIZE, write=lambda: None))
        text = "; ".join(problems)
        assert "no copy was made" in text, problems
        assert "after the COW fault, writer: expected present+exclusive" in text, problems
        assert "after the COW fault, other (the writer no longer maps the page): expected exclusive" in text, problems
        # without the per-page mapcount check, the unshared other side is not reported
        relaxed = oracles.exclusivity_problems(oracles.observe_cow(mem, THP_SIZE, write=lambda: None), False)
        assert not any(p.startswith("after the COW fault, other (") for p in relaxed), relaxed

    passes(body, 30.0)


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_looks_at_every_page_not_only_the_first() -> None:
    """The writer writes only the first base page: the other pages were not copied, and
    the check must name them (3 of 4)."""

    def body() -> None:
        r = private_anon(SIZE)
        libc.madvise(r.addr, SIZE, abi.Madv.NOHUGEPAGE)
        obs = oracles.observe_cow(r.addr, SIZE, write=lambda: libc.fill(r.addr, oracles.MODIFY, PAGE))
        problems = oracles.exclusivity_problems(obs)
        assert any("PFN unchanged on 3 of 4 pages (page 1:" in p for p in problems), problems

    passes(body, 30.0)


@pytest.mark.skipif(not system.is_root(), reason="PFNs in pagemap need root")
def test_exclusivity_check_passes_on_a_private_thp_range() -> None:
    def body() -> None:
        mem = private_thp_range()
        exact = oracles.per_page_mapcount()
        assert oracles.exclusivity_problems(oracles.observe_cow(mem, THP_SIZE), bool(exact)) == []

    passes(body, 30.0)


# ---------------------------------------------------------------------------------------
# ro_pin without gup_test


def test_ro_pin_skips_with_the_reason_without_gup_test() -> None:
    from lib.kernel.gup_test import GupTest

    def body() -> None:
        r = private_anon()
        oracles.ro_pin(r.addr, r.size, oracles.RO_PIN_SHARED, False, GupTest(None, "gup_test not available: x"))

    o = isolation.run_isolated(body, 30, skip_types=(pytest.skip.Exception,))
    assert (o.kind, o.message) == ("skip", "gup_test not available: x")
