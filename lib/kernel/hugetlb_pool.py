"""The hugetlb pool a fork() case needs, read from sysfs where the case needs it.

A private hugetlb page shared with a fork()ed child is copied when one of the two processes
writes it, and the copy needs a free page of the same size that no other mapping has reserved
(``free_hugepages`` counts reserved pages too, ``resv_hugepages`` is that part:
Documentation/admin-guide/mm/hugetlbpage.rst).  Without one the kernel keeps the owner's page,
unmaps it from the child and kills the child with SIGBUS at its next access ("killed due to
inadequate hugepage pool", mm/hugetlb.c), which a fork() case would misread as the kernel losing
the child's data.  So every hugetlb fork() case takes two pages (cow.c's ``hugetlb_setup(2,
...)``: the page it maps and the copy) and checks, right before each fork(), that the spare page
is still there.  A private mapping of a hugetlbfs file holds a reservation of its own (made at
mmap(), used by its first copy-on-write): the caller says so with ``own_reserved``.

Verdicts: too few pages in the pool before the case maps its memory is the outcome of a
pool-size probe (the prepare step could not grow it that far): skip with the numbers.  A pool
that has the pages but not free, or a spare page gone by the time of the fork, is a setup problem
of the harness or pool that would make the case judge the wrong thing: a failure with the
numbers, never a skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib.kernel import system

FORK_PAGES = 2  # the page the case maps and its copy-on-write copy (cow.c hugetlb_setup(2, ...))


@dataclass(frozen=True)
class Pool:
    """One size's counters (/sys/kernel/mm/hugepages/hugepages-<kB>kB/)."""

    size: int
    nr: int
    free: int
    resv: int

    @property
    def unreserved(self) -> int:
        """Free pages no mapping has reserved."""
        return self.free - self.resv

    def __str__(self) -> str:
        return f"{system.size_label(self.size)} hugetlb pool: nr_hugepages {self.nr}, " \
               f"free_hugepages {self.free}, resv_hugepages {self.resv}"


def read(size: int) -> Pool:
    c = {k: system.hugetlb_counter(size, k) for k in ("nr_hugepages", "free_hugepages", "resv_hugepages")}
    return Pool(size, c["nr_hugepages"], c["free_hugepages"], c["resv_hugepages"])


def available(size: int) -> int:
    """Huge pages of ``size`` a new mapping can reserve: free minus reserved, plus what
    overcommit still allows (Documentation/admin-guide/mm/hugetlbpage.rst)."""
    c = system.hugetlb_counter
    over = c(size, "nr_overcommit_hugepages") - c(size, "surplus_hugepages")
    return c(size, "free_hugepages") - c(size, "resv_hugepages") + max(0, over)


def require_before_map(size: int, pages: int = FORK_PAGES) -> Pool:
    """Before the case maps its hugetlb memory: ``pages`` free, unreserved pages.

    Skips when the pool itself is smaller (a pool-size probe: the prepare step could not grow
    it); fails with the numbers when the pool is big enough but its pages are in use or
    reserved by another mapping.
    """
    p = read(size)
    if p.nr < pages:
        pytest.skip(f"{p}: a fork() case needs {pages} pages")
    if p.unreserved < pages:
        raise AssertionError(f"{p} before mapping: {pages} free unreserved pages needed "
                             "(the pool was grown for this case; a setup problem of the pool, not a kernel verdict)")
    return p


def require_spare_before_fork(size: int, spare: int = FORK_PAGES - 1, own_reserved: int = 0) -> Pool:
    """Right before fork(), with the case's page mapped and populated: ``spare`` free pages for a
    copy-on-write copy that no other mapping has reserved (``own_reserved``: reservations the
    case's own mappings still hold), else a failure with the numbers."""
    p = read(size)
    if p.unreserved + own_reserved < spare:
        raise AssertionError(f"{p} right before fork(): {spare} free page(s) needed for a copy-on-write, "
                             f"{own_reserved} of the reserved ones the case's own "
                             "(a setup problem of the pool, not a kernel verdict)")
    return p
