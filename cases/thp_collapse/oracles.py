"""Userfaultfd oracles of the THP-collapse cases: a collapse keeps what userfaultfd set up.

A page write-protected with UFFDIO_WRITEPROTECT keeps pagemap bit 57 (PM_UFFD_WP) and a write
to it still raises a WP fault after a collapse (Documentation/admin-guide/mm/userfaultfd.rst,
"Write Protect Notifications"; mm/khugepaged.c refuses to collapse a range with uffd-wp PTEs);
a missing page of a MISSING-registered range still faults (khugepaged.c collapse_* with uffd).
Registered memory is touched only from a lib.kernel.toucher.Toucher (docs/ARCHITECTURE.md
rule 1); tests/test_thp_collapse_oracles.py holds the negative controls.
"""

from __future__ import annotations

import select

from cases.thp_collapse.matrix import PAGE_SIZE
from lib.kernel import libc
from lib.kernel.pagemap import Pagemap
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import Msg, Userfaultfd


def touch_outcome(u: Userfaultfd, toucher: Toucher, op: str, addr: int, val: int = 0,
                  timeout: float = 5.0) -> Msg | None:
    """Touch ``addr`` ("r" or "w" with byte ``val``) in the (pollable) toucher thread; returns
    the uffd message it raised (None when the access completed without one).  A raised fault is
    left for the caller to resolve."""
    if op == "w":
        toucher.touch_write(addr, val)
    else:
        toucher.touch_read(addr)
    p = select.poll()
    p.register(u.fd, select.POLLIN)
    p.register(toucher.done_fd, select.POLLIN)
    ev = p.poll(int(timeout * 1000))
    if not ev:
        raise AssertionError(f"{op} at {addr:#x}: neither completed nor faulted within {timeout}s")
    if u.fd in {fd for fd, _ in ev}:
        return u.read_msg(timeout)
    toucher.join(0)
    return None


def wait_done(toucher: Toucher, timeout: float = 5.0) -> None:
    if not toucher.wait(timeout):
        raise AssertionError(f"the access did not complete within {timeout}s after the fault was resolved")
    toucher.join(0)


def wp_kept(u: Userfaultfd, addr: int, npages: int, protected: list[bool], toucher: Toucher) -> None:
    """Oracle: every page marked in ``protected`` still has pagemap bit 57 and a write to it
    raises a WP fault (resolved by un-protecting that page); unprotected pages write freely.
    The written byte is the page's old first byte, so contents are not changed."""
    with Pagemap() as pm:
        bits = [e.uffd_wp for e in pm.entries(addr, npages)]
    lost = [i for i in range(npages) if protected[i] and not bits[i]]
    if lost:
        raise AssertionError(f"uffd-wp bit 57 lost on {len(lost)} protected page(s), first {lost[:8]}")
    for i in range(npages):
        a = addr + i * PAGE_SIZE
        old = libc.read(a, 1)[0]
        m = touch_outcome(u, toucher, "w", a, old)
        if protected[i]:
            if m is None:
                raise AssertionError(f"write to protected page {i} did not trap (pagemap bit 57 was set)")
            if not (m.is_wp and (m.address & ~(PAGE_SIZE - 1)) == a):
                raise AssertionError(f"write to protected page {i}: unexpected uffd message {m}")
            u.writeprotect(a, PAGE_SIZE, False)
            wait_done(toucher)
        elif m is not None:
            raise AssertionError(f"write to unprotected page {i} trapped: {m}")

