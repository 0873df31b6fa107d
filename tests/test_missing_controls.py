"""Negative controls for the MISSING area (cases/missing): every oracle must be able to fail.

Each control runs a case's oracle against a deliberately broken handler or setup and requires a
non-pass outcome.  Controls that could block (a fault nobody serves) run in lib.runner.isolation.run_isolated
with a short deadline.  They need a usable userfaultfd (root or vm.unprivileged_userfaultfd).
"""

from __future__ import annotations

import errno

import pytest

from cases.missing import support
from lib.kernel import abi, handler, libc, uffd
from lib.kernel.memtypes import MemType
from lib.kernel.uffd import Msg, open_for
from lib.runner.isolation import run_isolated

pytestmark = pytest.mark.skipif(not uffd.probe().syscall, reason="userfaultfd(2) not usable here")

ANON, SHMEM = MemType("anon"), MemType("shmem")


def fails(fn, timeout: float = 20.0) -> str:
    """Run ``fn`` isolated; it must not pass.  Returns the outcome kind for finer checks."""
    o = run_isolated(fn, timeout)
    assert o.kind != "pass", "the oracle accepted a broken run"
    return o.kind


def passes(fn, timeout: float = 30.0) -> None:
    o = run_isolated(fn, timeout)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"


# -- register-ioctls / zeropage ---------------------------------------------------------------
from cases.missing import test_register_ioctls as reg  # noqa: E402


def test_register_ioctls_mask_missing_copy_is_caught() -> None:
    def run() -> None:
        with support.make_area(ANON, 1, counters=False) as a, open_for(0) as u:
            def broken(mode: int) -> int:
                return u.register(a.dst.addr, a.page_size, mode) & ~abi.ioctl_mask(abi.IoctlBit.COPY)

            reg.check_register_combo(broken, lambda: u.unregister(a.dst.addr, a.page_size), True, True, False, False)

    with pytest.raises(AssertionError, match="ioctls"):
        run()


def test_register_ioctls_expected_einval_is_caught() -> None:
    """MINOR on shmem succeeds: claiming the area is anon (EINVAL expected) must fail."""
    with support.make_area(SHMEM, 1, counters=False) as a, open_for(abi.Feature.MINOR_SHMEM) as u, \
            pytest.raises(AssertionError, match="expected EINVAL"):
        reg.check_register_combo(lambda m: u.register(a.dst.addr, a.page_size, m),
                                 lambda: u.unregister(a.dst.addr, a.page_size), True, False, False, True)


def test_zeropage_on_populated_page_is_caught() -> None:
    with support.make_area(ANON, 1, counters=False) as a, open_for(0) as u:
        libc.fill(a.dst.addr, 7, a.page_size)
        u.register(a.dst.addr, a.page_size)
        with pytest.raises((AssertionError, OSError)):  # the first ZEROPAGE fails with EEXIST
            reg.check_zeropage(u, a.dst.addr, None, a.page_size, True)


def test_zeropage_einval_expectation_is_caught() -> None:
    with support.make_area(ANON, 1, counters=False) as a, open_for(0) as u:
        u.register(a.dst.addr, a.page_size)
        with pytest.raises(AssertionError, match="succeeded"):
            reg.check_zeropage(u, a.dst.addr, None, a.page_size, False)


# -- copy semantics ---------------------------------------------------------------------------
from cases.missing import test_copy as cp  # noqa: E402


def test_copy_eexist_without_a_mapped_page_is_caught() -> None:
    with pytest.raises(AssertionError, match="EEXIST"):
        cp.run_copy_eexist(ANON, first_copy=False)


def test_copy_esrch_with_a_live_process_is_caught() -> None:
    fails(lambda: cp.run_copy_esrch(ANON, kill_child=False))


def test_copy_partial_without_a_mapped_page_is_caught() -> None:
    with pytest.raises(AssertionError, match="EAGAIN"):
        cp.run_copy_partial(ANON, populate_second=False)


def test_wake_without_wake_is_caught() -> None:
    fails(lambda: cp.run_wake(ANON, wake=False))


def test_dontwake_oracle_catches_a_waking_copy() -> None:
    fails(lambda: cp.run_copy_dontwake(ANON, mode=0))


def test_copy_positive_runs() -> None:
    passes(lambda: (cp.run_copy_eexist(ANON), cp.run_copy_partial(ANON), cp.run_wake(ANON),
                    cp.run_copy_dontwake(ANON), cp.run_copy_esrch(ANON)))


# -- fault flags ------------------------------------------------------------------------------
from cases.missing import test_fault_flags as ff  # noqa: E402


def _msg(flags: int) -> Msg:
    return Msg(abi.Event.PAGEFAULT, flags=flags, address=0x1000)


def test_rw_flag_oracle() -> None:
    ff.check_rw_flag(_msg(0), write=False)
    ff.check_rw_flag(_msg(abi.PagefaultFlag.WRITE), write=True)
    with pytest.raises(AssertionError):
        ff.check_rw_flag(_msg(abi.PagefaultFlag.WRITE), write=False)
    with pytest.raises(AssertionError):
        ff.check_rw_flag(_msg(0), write=True)
    with pytest.raises(AssertionError):
        ff.check_rw_flag(_msg(abi.PagefaultFlag.WP), write=False)


def test_mutex_oracle_names_glibc() -> None:
    ff.check_mutex_fault(_msg(0), "2.36")
    with pytest.raises(AssertionError, match=r"glibc 2\.36"):
        ff.check_mutex_fault(_msg(abi.PagefaultFlag.WRITE), "2.36")


def test_write_access_is_seen_as_write() -> None:
    """The mutex check would catch a writing lock: a plain write faults with WRITE here."""
    def run() -> None:
        with support.make_area(ANON, 1) as a, open_for(0) as u:
            u.register(a.dst.addr, a.page_size)
            m, _ = ff.fault_once(u, a, lambda: libc.write(a.dst.addr, b"\1"))
            ff.check_mutex_fault(m, libc.glibc_version())

    fails(run)


def test_thread_id_and_exact_address_checks_can_fail() -> None:
    """Without the features the kernel reports ptid 0 and an aligned address, so the cases'
    equality checks (ptid == tid, address == target) distinguish the two."""
    def run() -> None:
        with support.make_area(ANON, 1) as a, open_for(0) as u:
            u.register(a.dst.addr, a.page_size)
            target = a.dst.addr + 0x123
            m, tid = ff.fault_once(u, a, lambda: libc.read(target, 1))
            assert m.ptid != tid and m.address != target

    passes(run)


# -- events -----------------------------------------------------------------------------------
from cases.missing import test_events as ev  # noqa: E402


def test_events_positive() -> None:
    passes(lambda: ev.run_events(ANON, wp=False))


def test_events_dropped_fork_event_is_caught() -> None:
    """A monitor that reads FORK but never serves the child's uffd: the child hangs."""
    kind = fails(lambda: ev.run_events(ANON, False, handler.Options(reject_write_missing=True, follow_fork=False)),
                 timeout=10)
    assert kind in ("timeout", "fail")


def test_events_ignored_remove_is_caught() -> None:
    """A monitor that ignores REMOVE serves stale source data after the release."""
    fails(lambda: ev.run_events(ANON, False, handler.Options(reject_write_missing=True, ignore_remove=True)))


# -- sigbus / poison --------------------------------------------------------------------------
from cases.missing import test_poison as po  # noqa: E402
from cases.missing import test_sigbus as sb  # noqa: E402


def test_sigbus_positive() -> None:
    passes(lambda: sb.run_sigbus(ANON, wp=True))


def test_sigbus_unresolved_signal_is_caught() -> None:
    fails(lambda: sb.run_sigbus(ANON, wp=False, resolve=False))


def test_poison_handler_that_never_poisons_is_caught() -> None:
    def copy_only(a, u, stats):
        def handle(m: Msg) -> None:
            support.copy_page(u, m.address & ~(a.page_size - 1), support.zero_source(a.page_size), a.page_size)

        return handle

    fails(lambda: po.run_poison(ANON, copy_only))
    passes(lambda: po.run_poison(ANON))


# -- move -------------------------------------------------------------------------------------
from cases.missing import test_move as mv  # noqa: E402


def test_move_handler_that_copies_is_caught() -> None:
    def copier(u, src, dst, chunk, stats):
        def handle(m: Msg) -> None:
            off = (m.address - dst) & ~(chunk - 1)
            u.copy(dst + off, src + off, chunk)
            stats.missing += 1

        return handle

    fails(lambda: mv.run_move(libc.PAGE_SIZE, abi.Madv.NOHUGEPAGE, None, copier))


# -- minor ------------------------------------------------------------------------------------
from cases.missing import test_minor as mn  # noqa: E402


def test_minor_handler_without_inversion_is_caught() -> None:
    def no_invert(a, u, stats, apply_wp, registered):
        def handle(m: Msg) -> None:
            u.cont(m.address & ~(a.page_size - 1), a.page_size)
            stats.minor += 1

        return handle

    fails(lambda: mn.run_minor(SHMEM, wp=False, handler_factory=no_invert))
    passes(lambda: mn.run_minor(SHMEM, wp=True))


def test_minor_wp_pagemap_check_is_caught() -> None:
    """CONTINUE without MODE_WP on a MINOR|WP range leaves the uffd-wp bit clear."""
    def no_wp(a, u, stats, apply_wp, registered):
        return support.default_handler(a, u, stats, False, registered)

    fails(lambda: mn.run_minor(SHMEM, wp=True, handler_factory=no_wp))


# -- mmap-changing ----------------------------------------------------------------------------
from cases.missing import test_mmap_changing as mc  # noqa: E402


def test_mmap_changing_without_pending_event_is_caught() -> None:
    with support.make_area(SHMEM, 4, counters=False, alias=False) as a, open_for(mc.FEATURES) as u:
        src = support.zero_source(a.page_size)
        u.register(a.dst.addr, a.size)
        with pytest.raises(AssertionError, match="EAGAIN"):
            mc.check_eagain_ops(u, a, src)


def test_mmap_changing_positive() -> None:
    passes(mc.run_mmap_changing)


# -- kernel-mode faults -----------------------------------------------------------------------
from cases.missing import test_kernel_mode as km  # noqa: E402


def test_kernel_mode_efault_expectation_is_caught() -> None:
    fails(lambda: km.run_kernel_mode(ANON, "read", True, open_user_mode_only=False))


def test_kernel_mode_served_expectation_is_caught() -> None:
    fails(lambda: km.run_kernel_mode(ANON, "write", False, open_user_mode_only=True))


# -- e2b matrix and loads ---------------------------------------------------------------------
from cases.missing import test_e2b as e2b  # noqa: E402


def test_e2b_wrong_page_is_caught() -> None:
    """A handler that serves zeros instead of the source page."""
    fails(lambda: e2b.run_matrix(ANON, 32, [("r", 15)], handler.Options(zero=True)))
    passes(lambda: e2b.run_matrix(ANON, 32, [("r", 15), ("w", 3)]))


def test_e2b_matrix_write_that_did_not_land_is_caught() -> None:
    """A write op that faults the page in but whose store is lost: the read after it, and the
    content check after the ops, must see the source where the tag should be."""
    def lost_write(op, addr, src, nr, ps, written) -> bool:
        if op == "w":
            libc.madvise(addr, ps, abi.Madv.POPULATE_WRITE)
            written.add(nr)
            return True
        return e2b.do_op(op, addr, src, nr, ps, written)

    o = run_isolated(lambda: e2b.run_matrix(ANON, 32, [("w", 0), ("r", 0)], do=lost_write), 20)
    assert o.kind == "fail" and "content differs" in o.message and "got [0, 0, 0]" in o.message, o.message
    passes(lambda: e2b.run_matrix(ANON, 32, [("w", 0), ("r", 0)]))


def test_e2b_check_matrix_catches_extra_and_missing_pages() -> None:
    ops = [("r", 0)]
    ok = handler.Stats(states={0: handler.CLEAN}, faults=[{"address": 0x1000, "flags": 0, "ptid": 0}])
    e2b.check_matrix(ok, ops, [True, False], 0x1000, 0x1000)
    extra = handler.Stats(states={0: handler.CLEAN, 1: handler.CLEAN}, faults=ok.faults)
    with pytest.raises(AssertionError, match="installed"):
        e2b.check_matrix(extra, ops, [True, True], 0x1000, 0x1000)
    with pytest.raises(AssertionError, match="pagemap"):
        e2b.check_matrix(ok, ops, [False, False], 0x1000, 0x1000)
    dirty = handler.Stats(states={0: handler.DIRTY}, faults=ok.faults)
    with pytest.raises(AssertionError, match="states"):
        e2b.check_matrix(dirty, ops, [True, False], 0x1000, 0x1000)


def test_e2b_load_wrong_page_is_caught() -> None:
    fails(lambda: e2b.run_load("r", True, 10_000, False, handler.Options(zero=True)))


from cases.missing import write_load  # noqa: E402


class DropsOp(write_load.Writer):
    """A writer one of whose writes is lost (op ``DROP``; -1: its last op)."""

    DROP = 1000

    def store(self, slot: int, tag: int, n: int) -> None:
        k = self.DROP if self.DROP >= 0 else self.n - 1
        if tag != self._tags.buffer_info()[0] + 8 * k:
            libc._memcpy(slot, tag, n)


class DropsLast(DropsOp):
    DROP = -1


class StrayWrite(write_load.Writer):
    """A writer that also writes once into the bytes after its slice (never written)."""

    def store(self, slot: int, tag: int, n: int) -> None:
        libc._memcpy(slot, tag, n)
        if tag == self._tags.buffer_info()[0]:  # op 0 writes slot 0: the slice starts here
            libc._memcpy(slot + write_load.SLICE, tag, n)


def load_outcome(fn) -> tuple[str, str]:
    o = run_isolated(fn, 60)
    return o.kind, o.message


@pytest.mark.parametrize("parallel,prefault", [(False, False), (True, False), (True, True)],
                         ids=["serial", "parallel", "parallel-prefault"])
def test_e2b_write_load_catches_lost_and_stray_writes(parallel: bool, prefault: bool) -> None:
    """A write lost mid-load (a round that did not hold), the last write lost (the page after
    the load), a write outside the writer's slice (the source bytes elsewhere)."""
    n = 40_004  # no writer's last op ends a round: the page after the load must show it
    assert load_outcome(lambda: e2b.run_load("w", parallel, n, prefault)) == ("pass", "")
    kind, msg = load_outcome(lambda: e2b.run_load("w", parallel, n, prefault, writer=DropsOp))
    assert kind == "fail" and "round of writes did not hold" in msg and "31" in msg, msg
    kind, msg = load_outcome(lambda: e2b.run_load("w", parallel, n, prefault, writer=DropsLast))
    assert kind == "fail" and "page 0 after the load" in msg and "expected its tag" in msg, msg
    kind, msg = load_outcome(lambda: e2b.run_load("w", parallel, n, prefault, writer=StrayWrite))
    assert kind == "fail" and "page 0 after the load" in msg and "(not written)" in msg, msg


def test_e2b_write_load_catches_wrong_source_content() -> None:
    """A handler that serves zeros: the bytes no writer wrote are not the source bytes."""
    kind, msg = load_outcome(lambda: e2b.run_load("w", True, 40_000, True, handler.Options(zero=True)))
    assert kind == "fail" and "expected the handler's source bytes" in msg, msg


def test_write_load_expected_page_and_differences() -> None:
    w = write_load.Writer(1, write_load.SLOTS + 3)
    src = bytes(range(256)) * 16
    want = write_load.expected_page(src, [w])
    o = w.offset
    assert want[:o] == src[:o] and want[o + write_load.SLICE:] == src[o + write_load.SLICE:]
    assert int.from_bytes(want[o:o + 8], "little") == write_load.tag(1, write_load.SLOTS)
    assert int.from_bytes(want[o + 24:o + 32], "little") == write_load.tag(1, 3)
    assert write_load.differences(want, src, [w]) == []
    assert write_load.differences(src, src, [w])[0].startswith("writer 1 slot 0")
    short = write_load.Writer(0, 2)
    assert write_load.expected_page(src, [short])[16:] == src[16:]


# -- minor-collapse: MADV_COLLAPSE failures are verdicts, not skips ---------------------------
from cases.missing import test_minor as minor  # noqa: E402


@pytest.mark.parametrize("errs,verdict", [
    ([errno.EINVAL], "setup step failed: MADV_COLLAPSE"),
    ([errno.EFAULT], "setup step failed: MADV_COLLAPSE"),
    ([errno.EAGAIN, errno.EAGAIN], "cannot test: MADV_COLLAPSE"),
    ([errno.ENOMEM], "cannot test: MADV_COLLAPSE"),
    ([errno.EAGAIN], None),  # retried once: the second call collapses
], ids=["EINVAL", "EFAULT", "EAGAIN twice", "ENOMEM", "EAGAIN once"])
def test_minor_collapse_refusal_is_not_a_skip(monkeypatch, errs: list[int], verdict: str | None) -> None:
    """Before, any MADV_COLLAPSE error skipped minor-collapse."""
    from lib import check

    calls = list(errs)

    def madvise(addr: int, length: int, advice: int) -> None:
        assert advice == abi.Madv.COLLAPSE
        if calls:
            e = calls.pop(0)
            raise OSError(e, "refused")

    monkeypatch.setattr(minor.libc, "madvise", madvise)
    if verdict is None:
        minor.collapse_or_cannot_test(0x1000, 0x200000)
        return
    kind = check.CannotTest if verdict.startswith("cannot") else AssertionError
    with pytest.raises(kind) as ei:
        minor.collapse_or_cannot_test(0x1000, 0x200000)
    text = (check.CANNOT_TEST_PREFIX if kind is check.CannotTest else "") + str(ei.value)
    assert text.startswith(verdict), text


# -- bounce -----------------------------------------------------------------------------------
from cases.missing import test_bounce as bo  # noqa: E402


def test_bounce_wrong_page_is_caught() -> None:
    """A handler that copies source page 0 for every fault: counters go wrong."""
    def wrong(b, m: Msg) -> bool:
        if b.sentinel.addr <= m.address < b.sentinel.end:
            return bo.handle_fault(b, m)
        if m.is_wp:
            return bo.handle_fault(b, m)
        try:
            b.u.copy(m.address & ~(b.ps - 1), b.src.addr, b.ps, abi.CopyMode.WP if b.wp else 0)
        except uffd.UffdError as e:
            if e.errno != errno.EEXIST:
                raise
            b.u.wake(m.address & ~(b.ps - 1), b.ps)
        return True

    fails(lambda: bo.run_bounce(ANON, 512, bounces=4, handle=wrong), timeout=60)
    passes(lambda: bo.run_bounce(ANON, 512, bounces=4), timeout=60)
