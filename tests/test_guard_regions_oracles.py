"""Negative controls of cases/guard_regions (docs/ARCHITECTURE.md rule 3).

* guarded: pages without a guard marker (reads and writes succeed), and a MISSING-registered
  hole without a marker (the access waits in a userfault): both must fail;
* no_message: a userfaultfd holding a fault message must fail it.
"""

from __future__ import annotations

from cases.guard_regions import oracles
from lib.kernel import abi, access, libc, needs, uffd
from tests.controls import fails, passes

PAGE = libc.PAGE_SIZE






def test_guarded_fails_on_ordinary_pages() -> None:
    def body() -> None:
        m = libc.mmap(2 * PAGE)
        fails(oracles.guarded, [m, m + PAGE], None, "control", contains="succeeded")
        libc.madvise(m, PAGE, abi.Madv.GUARD_INSTALL)
        oracles.guarded([m], None, "control")
        fails(oracles.guarded, [m, m + PAGE], None, "control", contains="succeeded")

    passes(body)


def test_guarded_fails_on_a_registered_hole() -> None:
    def body() -> None:
        needs.uffd_features(0)
        m = libc.mmap(2 * PAGE)
        with uffd.open_for(0) as u:
            u.register(m, 2 * PAGE, abi.RegisterMode.MISSING)
            fails(oracles.guarded, [m], u, "control", contains="in a userfault")

    passes(body)


def test_no_message_fails_on_a_pending_fault() -> None:
    def body() -> None:
        needs.uffd_features(0)
        m = libc.mmap(PAGE)
        with uffd.open_for(0) as u:
            u.register(m, PAGE, abi.RegisterMode.MISSING)
            oracles.no_message(u, "control")
            a = access.read(m, timeout=10.0, watch_fd=u.fd, on_watch=lambda: None)
            assert a.blocked, a
            # the killed task withdrew its message: fault again, and leave it pending
            pid_msg = access.read(m, timeout=10.0, watch_fd=u.fd,
                                  on_watch=lambda: fails(oracles.no_message, u, "control", contains="PAGEFAULT"))
            assert pid_msg.blocked, pid_msg

    passes(body)
