"""Negative controls of the uffd_ops area (cases/uffd_ops): every oracle can fail.

Each oracle (errno, content, pagemap bits, userfault message, signal, sleep) is fed a wrong
world and must report it: the wrong errno, a call that succeeds, a stale page, a page that is
present where a hole was expected, a missing fault where a WP fault was expected, a child that
was not killed by SIGBUS, a faulting thread that was woken or a task asleep elsewhere.  Beside
each, the right world passes, so a control cannot fail for an unrelated reason.  Then whole
scenarios of the matrix run against a broken operation (a stale source, a POISON that maps
zeroes, a WRITEPROTECT that does nothing, a page never populated, a resolving ioctl that
ignores MODE_DONTWAKE, a child that kept CAP_SYS_PTRACE) and must fail.  Anything that touches
userfaultfd memory runs in run_isolated with a deadline.
"""

from __future__ import annotations

import errno
import os
import signal

import pytest

from lib.kernel import abi, system
from lib.runner.isolation import run_isolated

pytestmark = pytest.mark.skipif(not system.is_root(), reason="needs root (uffd on every memory type, PFNs)")

SKIPS = (pytest.skip.Exception,)
PAGE = system.PAGE_SIZE


def isolated(fn, timeout: float = 30.0):
    out = run_isolated(fn, timeout, skip_types=SKIPS)
    if out.kind == "skip":
        pytest.skip(out.message)
    return out


def fails(fn, *words: str) -> None:
    """``fn`` (run isolated) must fail with a message naming every one of ``words``."""
    out = isolated(fn)
    assert out.kind == "fail", (out.kind, out.message)
    for w in words:
        assert w in out.message, (w, out.message)


def passes(fn) -> None:
    out = isolated(fn)
    assert out.kind == "pass", (out.kind, out.message)


# -- the errno oracle ---------------------------------------------------------------------------
def _copy_onto_mapped(expect: str) -> None:
    from cases.uffd_ops import oracles
    from lib.kernel import libc, memory
    from lib.kernel.uffd import open_for

    dst, src = memory.anon(PAGE), memory.anon(PAGE)
    libc.fill(dst.addr, 1, PAGE)
    libc.fill(src.addr, 2, PAGE)
    with open_for(0) as u:
        u.register(dst.addr, PAGE)
        oracles.expect_errno(lambda: u.copy(dst.addr, src.addr, PAGE), expect, "COPY onto a mapped page")


def _copy_onto_hole(expect: str) -> None:
    from cases.uffd_ops import oracles
    from lib.kernel import libc, memory
    from lib.kernel.uffd import open_for

    dst, src = memory.anon(PAGE), memory.anon(PAGE)
    libc.fill(src.addr, 2, PAGE)
    with open_for(0) as u:
        u.register(dst.addr, PAGE)
        oracles.expect_errno(lambda: u.copy(dst.addr, src.addr, PAGE), expect, "COPY onto a hole")


def test_errno_oracle_right_errno_passes() -> None:
    passes(lambda: _copy_onto_mapped("EEXIST"))


def test_errno_oracle_fed_the_wrong_errno_fails() -> None:
    fails(lambda: _copy_onto_mapped("ENOENT"), "expected ENOENT", "got EEXIST")


def test_errno_oracle_fails_when_the_call_succeeds() -> None:
    fails(lambda: _copy_onto_hole("EEXIST"), "expected EEXIST", "succeeded")


def test_errno_oracle_checks_the_result_field() -> None:
    from cases.uffd_ops import oracles
    from lib.kernel.uffd import UffdError

    def wrong_result() -> None:
        raise UffdError(errno.EEXIST, "UFFDIO_COPY", -errno.ENOENT)

    with pytest.raises(AssertionError, match="result field"):
        oracles.expect_errno(wrong_result, "EEXIST", "a COPY whose result field disagrees")


# -- the content oracle -------------------------------------------------------------------------
def _content(written: int, expected: int) -> None:
    from cases.uffd_ops import oracles
    from lib.kernel import libc, memory

    r = memory.anon(PAGE)
    libc.fill(r.addr, written, oracles.SAMPLE)
    libc.fill(r.addr + PAGE - oracles.SAMPLE, written, oracles.SAMPLE)
    got = (libc.read(r.addr, oracles.SAMPLE), libc.read(r.addr + PAGE - oracles.SAMPLE, oracles.SAMPLE))
    oracles.expect_content(got, oracles.sample(oracles.expected_page(expected, PAGE), PAGE), "the page")


def test_content_oracle_right_page_passes() -> None:
    passes(lambda: _content(0xA1, 0xA1))


def test_content_oracle_given_a_stale_page_fails() -> None:
    fails(lambda: _content(0xA1, 0xB2), "the first 64 bytes")


def test_content_oracle_sees_a_wrong_tail() -> None:
    from cases.uffd_ops import oracles

    page = oracles.expected_page(0xA1, PAGE, tail=0xA2)
    with pytest.raises(AssertionError, match="last 64 bytes"):
        expected = oracles.sample(oracles.expected_page(0xA1, PAGE), PAGE)
        oracles.expect_content(oracles.sample(page, PAGE), expected, "the page")


# -- the pagemap oracle -------------------------------------------------------------------------
def _pagemap(populate: bool, **bits: bool) -> None:
    from cases.uffd_ops import oracles
    from lib.kernel import libc, memory
    from lib.kernel.pagemap import Pagemap

    r = memory.anon(PAGE)
    if populate:
        libc.fill(r.addr, 1, PAGE)
    with Pagemap() as pm:
        oracles.expect_pagemap(pm.entry(r.addr), "the page", **bits)


def test_pagemap_oracle_right_bits_pass() -> None:
    passes(lambda: _pagemap(True, present=True, uffd_wp=False, file=False))
    passes(lambda: _pagemap(False, present=False))


def test_pagemap_oracle_present_page_where_a_hole_was_expected_fails() -> None:
    fails(lambda: _pagemap(True, present=False), "PM_PRESENT expected clear")


def test_pagemap_oracle_unprotected_page_where_wp_was_expected_fails() -> None:
    fails(lambda: _pagemap(True, uffd_wp=True), "PM_UFFD_WP expected set")


def test_pagemap_oracle_hole_where_a_page_was_expected_fails() -> None:
    fails(lambda: _pagemap(False, present=True), "PM_PRESENT expected set")


def test_pagemap_oracle_anon_page_where_a_file_page_was_expected_fails() -> None:
    fails(lambda: _pagemap(True, file=True), "PM_FILE expected set")


# -- the message oracle -------------------------------------------------------------------------
def _missing_read(expect: str | None, claim_write: bool = False) -> None:
    """A real read of a registered anon hole: a MISSING fault without the WRITE flag."""
    from cases.uffd_ops import oracles
    from cases.uffd_ops.matrix import ROWS
    from cases.uffd_ops.test_uffd_ops import Ctx
    from lib.kernel.memtypes import MemType

    row = next(r for r in ROWS if r.scenario == "copy_plain")
    c = Ctx(row, MemType("anon"))
    try:
        a = c.access(c.addr)
        oracles.expect_access(oracles.Access(claim_write or a.write, a.msg), expect, "the read")
    finally:
        c.close()


def test_message_oracle_right_fault_passes() -> None:
    passes(lambda: _missing_read("missing"))


def test_message_oracle_missing_fault_where_wp_was_expected_fails() -> None:
    fails(lambda: _missing_read("wp"), "expected a wp userfault")


def test_message_oracle_fault_where_none_was_expected_fails() -> None:
    fails(lambda: _missing_read(None), "expected no userfault")


def test_message_oracle_wrong_write_flag_fails() -> None:
    fails(lambda: _missing_read("missing", claim_write=True), "WRITE flag")


def test_message_oracle_completed_access_where_a_fault_was_expected_fails() -> None:
    from cases.uffd_ops import oracles

    with pytest.raises(AssertionError, match="expected a minor userfault"):
        oracles.expect_access(oracles.Access(False, None, (b"", b"")), "minor", "the read")


# -- the signal oracle --------------------------------------------------------------------------
def _child_then(action: str, expect: int | None) -> None:
    from cases.uffd_ops import oracles
    from lib.kernel.tasks import fork_call, reap

    def child() -> int:
        if action != "exit":
            os.kill(os.getpid(), getattr(signal, action))
        return 0

    oracles.expect_signal(reap(fork_call(child), 10), expect, "the child")


def test_signal_oracle_right_signal_passes() -> None:
    passes(lambda: _child_then("SIGBUS", signal.SIGBUS))
    passes(lambda: _child_then("exit", None))


def test_signal_oracle_child_that_lives_fails() -> None:
    fails(lambda: _child_then("exit", signal.SIGBUS), "expected SIGBUS", "exited with status 0")


def test_signal_oracle_wrong_signal_fails() -> None:
    fails(lambda: _child_then("SIGTERM", signal.SIGBUS), "expected SIGBUS", "SIGTERM")


def test_signal_oracle_signal_where_a_clean_exit_was_expected_fails() -> None:
    fails(lambda: _child_then("SIGBUS", None), "clean exit")


# -- the sleep oracle ---------------------------------------------------------------------------
def _asleep(world: str) -> None:
    """expect_asleep on a task in a given state: ``blocked`` a thread in a MISSING fault (right),
    ``woken`` a thread whose fault was resolved with a wake, ``exited`` a child that ended,
    ``elsewhere`` a child asleep in a pipe read, not in a userfault."""
    from cases.uffd_ops import oracles
    from cases.uffd_ops.matrix import ROWS
    from cases.uffd_ops.test_uffd_ops import Ctx
    from lib.kernel import memory
    from lib.kernel.memtypes import MemType
    from lib.kernel.tasks import Pipe, fork_call, reap, task_state

    if world in ("exited", "elsewhere"):
        go = Pipe()
        pid = fork_call(lambda: go.wait(10) if world == "elsewhere" else None)
        try:
            if world == "exited":
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie now, not reaped
            oracles.expect_asleep(pid, lambda: task_state(pid) in ("", "Z", "X"), "the child", timeout=0.5)
        finally:
            go.signal()
            reap(pid, 10)
            go.close()
        return
    row = next(r for r in ROWS if r.scenario == "copy_plain")
    c = Ctx(row, MemType("anon"))
    try:
        a = c.access(c.addr)
        if world == "woken":
            src = memory.anon(PAGE)
            c.u.copy(c.addr, src.addr, PAGE)  # resolves and wakes
            a.toucher.wait(10)
        oracles.expect_asleep(a.toucher.tid, a.toucher.done, "the faulting thread", timeout=0.5)
    finally:
        c.close()


def test_sleep_oracle_blocked_thread_passes() -> None:
    passes(lambda: _asleep("blocked"))


def test_sleep_oracle_woken_thread_fails() -> None:
    fails(lambda: _asleep("woken"), "was woken")


def test_sleep_oracle_exited_process_fails() -> None:
    fails(lambda: _asleep("exited"), "was woken")


def test_sleep_oracle_task_asleep_elsewhere_fails() -> None:
    fails(lambda: _asleep("elsewhere"), "is not asleep in handle_userfault")


# -- whole scenarios against a broken operation -------------------------------------------------
def _scenario(name: str, kind: str = "anon", patch: str = "") -> None:
    """Run the matrix's scenario ``name`` on ``kind`` with one part of the world broken."""
    from cases.uffd_ops import test_uffd_ops
    from cases.uffd_ops.matrix import ROWS
    from lib.kernel import caps
    from lib.kernel.memtypes import MemType
    from lib.kernel.uffd import Userfaultfd

    if patch == "stale source":  # the source holds other bytes than the case expects
        real = test_uffd_ops.fill_sample
        test_uffd_ops.fill_sample = lambda addr, ps, byte: real(addr, ps, byte ^ 0xFF)
    elif patch == "poison maps zeroes":
        Userfaultfd.poison = lambda self, addr, length, mode=0: self.zeropage(addr, length)
    elif patch == "writeprotect does nothing":
        Userfaultfd.writeprotect = lambda self, addr, length, protect, dontwake=False: None
    elif patch == "never populated":
        test_uffd_ops.Ctx.populate = lambda self, byte: None
    elif patch == "dontwake ignored":  # every resolving ioctl wakes, whatever its mode says
        zeropage, cont, poison, move = Userfaultfd.zeropage, Userfaultfd.cont, Userfaultfd.poison, Userfaultfd.move
        Userfaultfd.zeropage = lambda self, addr, length, mode=0: zeropage(self, addr, length, 0)
        Userfaultfd.cont = lambda self, addr, length, mode=0: cont(self, addr, length, int(mode) & ~1)
        Userfaultfd.poison = lambda self, addr, length, mode=0: poison(self, addr, length, 0)
        Userfaultfd.move = lambda self, dst, src, length, mode=0: move(self, dst, src, length, int(mode) & ~1)
    elif patch == "capability kept":  # the drop does nothing
        caps.drop = lambda *cs: None
    elif patch == "capability kept unseen":  # the drop does nothing, and its check is blind
        caps.drop = lambda *cs: None
        caps.has = lambda cap: False
    row = next(r for r in ROWS if r.scenario == name)
    c = test_uffd_ops.Ctx(row, MemType(kind))
    try:
        test_uffd_ops.SCENARIOS[name](c)
    finally:
        c.close()


RIGHT_WORLD = [("copy_plain", "anon"), ("poison_plain", "anon"), ("wp_protect", "anon"), ("copy_eexist", "anon"),
               ("zeropage_dontwake", "anon"), ("continue_dontwake", "shmem"), ("poison_dontwake", "anon"),
               ("move_dontwake", "anon"), ("api_fork_unprivileged", "anon"),
               ("open_kernel_faults_unprivileged", "anon")]


@pytest.mark.parametrize(("name", "kind"), RIGHT_WORLD, ids=[n for n, _ in RIGHT_WORLD])
def test_scenario_passes_in_the_right_world(name: str, kind: str) -> None:
    if name == "open_kernel_faults_unprivileged":
        _needs_unprivileged_sysctl_0()
    passes(lambda: _scenario(name, kind))


def test_copy_scenario_with_a_stale_source_fails() -> None:
    fails(lambda: _scenario("copy_plain", patch="stale source"), "the woken read")


def test_poison_scenario_without_poison_fails() -> None:
    fails(lambda: _scenario("poison_plain", patch="poison maps zeroes"), "PM_PRESENT expected clear")


def test_wp_scenario_without_protection_fails() -> None:
    fails(lambda: _scenario("wp_protect", patch="writeprotect does nothing"), "PM_UFFD_WP expected set")


def test_eexist_scenario_on_a_hole_fails() -> None:
    fails(lambda: _scenario("copy_eexist", patch="never populated"), "expected EEXIST", "succeeded")


@pytest.mark.parametrize(("name", "kind"), [("zeropage_dontwake", "anon"), ("continue_dontwake", "shmem"),
                                           ("poison_dontwake", "anon"), ("move_dontwake", "anon")])
def test_dontwake_scenario_with_a_wake_fails(name: str, kind: str) -> None:
    fails(lambda: _scenario(name, kind, patch="dontwake ignored"), "was woken")


def test_eperm_scenario_with_the_capability_kept_fails_its_setup_check() -> None:
    fails(lambda: _scenario("api_fork_unprivileged", patch="capability kept"), "CAP_SYS_PTRACE still effective")


def test_eperm_scenario_with_the_capability_kept_fails() -> None:
    fails(lambda: _scenario("api_fork_unprivileged", patch="capability kept unseen"), "expected EPERM",
          "succeeded")


def _needs_unprivileged_sysctl_0() -> None:
    from cases.uffd_ops.matrix import UNPRIVILEGED_SYSCTL
    from lib.kernel import system

    try:
        value = system.Settings.read(UNPRIVILEGED_SYSCTL)
    except OSError as e:
        pytest.skip(f"cannot read {UNPRIVILEGED_SYSCTL}: {e.strerror}")
    if value != "0":
        pytest.skip(f"{UNPRIVILEGED_SYSCTL} is {value} here (the scenario's row sets 0 for its case)")


def test_open_eperm_scenario_with_the_capability_kept_fails() -> None:
    _needs_unprivileged_sysctl_0()
    fails(lambda: _scenario("open_kernel_faults_unprivileged", patch="capability kept unseen"), "expected EPERM",
          "succeeded")


def test_poison_signal_oracle_end_to_end() -> None:
    """The poison scenario's child check alone: a child whose POISON maps zeroes reads zeroes
    and exits 3, which the signal oracle reports."""
    def run() -> None:
        from cases.uffd_ops import oracles, test_uffd_ops
        from cases.uffd_ops.matrix import ROWS
        from lib.kernel.memtypes import MemType
        from lib.kernel.tasks import Pipe, fork_call, reap
        from lib.kernel.uffd import Userfaultfd

        Userfaultfd.poison = lambda self, addr, length, mode=0: self.zeropage(addr, length)
        row = next(r for r in ROWS if r.scenario == "poison_plain")
        c = test_uffd_ops.Ctx(row, MemType("anon"))
        ready = Pipe()
        try:
            pid = fork_call(lambda: test_uffd_ops._poison_child(c, ready))
            ready.wait(10)
            oracles.expect_signal(reap(pid, 10), signal.SIGBUS, "a read of a poisoned page")
        finally:
            ready.close()
            c.close()

    fails(run, "expected SIGBUS", "exited with status 3")


def test_abi_bits_used_by_the_oracles() -> None:
    """The oracles' fault kinds are the uAPI's pagefault flags."""
    from cases.uffd_ops import oracles

    assert {"missing": 0, "wp": int(abi.PagefaultFlag.WP), "minor": int(abi.PagefaultFlag.MINOR)} == oracles.FAULT_FLAGS
