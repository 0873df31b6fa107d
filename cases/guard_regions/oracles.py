"""Oracles of the guard_regions area (guard-regions.c's try_read_write_buf and the uffd case).

* :func:`guarded`: every page of a list refuses both a read and a write with SIGSEGV
  ("ASSERT_FALSE(try_read_write_buf(curr))"), and no access blocked in a userfault: a guard
  marker is no missing page, so a MISSING-registered range raises no userfault for it;
* :func:`no_message`: the userfaultfd holds no message.

Negative controls: tests/test_guard_regions_oracles.py.
"""

from __future__ import annotations

from lib.kernel import access, libc, uffd

PAGE = libc.PAGE_SIZE


def guarded(pages: list[int], u: uffd.Userfaultfd | None, what: str) -> None:
    fd = u.fd if u is not None else -1
    for a in pages:
        for acc in (access.read(a, timeout=10.0, watch_fd=fd), access.write(a, timeout=10.0, watch_fd=fd)):
            if acc.blocked:
                raise AssertionError(f"{what}: {acc} in a userfault instead of SIGSEGV")
            if not acc.segv:
                raise AssertionError(f"{what}: {acc}; a guard page must raise SIGSEGV")


def no_message(u: uffd.Userfaultfd, what: str) -> None:
    msgs = u.read_msgs()
    if msgs:
        raise AssertionError(f"{what}: the userfaultfd got {len(msgs)} message(s), first {msgs[0]}")
