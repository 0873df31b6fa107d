"""The hugetlb pool a fork() case needs, read from sysfs where the case needs it.

A private hugetlb page shared with a fork()ed child is copied when one of the two processes
writes it, and the copy needs a free page of the same size.  ``free_hugepages`` counts pages
reserved for mappings too (Documentation/admin-guide/mm/hugetlbpage.rst); a private mapping of a
hugetlbfs file holds the very reservation its copy will use, so the checks read free_hugepages
and report resv_hugepages alongside.  Without a free page the kernel keeps the owner's page,
unmaps it from the child and kills the child with SIGBUS at its next access ("killed due to
inadequate hugepage pool", mm/hugetlb.c), which a fork() case would misread as the kernel losing
the child's data.  So every hugetlb fork() case takes two pages (cow.c's ``hugetlb_setup(2,
...)``: the page it maps and the copy) and checks, right before each fork(), that the spare
page is still there.

Verdicts: too few pages in the pool before the case maps its memory is the outcome of a
pool-size probe (the prepare step could not grow it that far): skip with the numbers.  A pool
that has the pages but not free, or a spare page gone by the time of the fork, is a setup problem
of the harness or pool that would make the case judge the wrong thing: a failure with the
numbers, never a skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib import system

FORK_PAGES = 2  # the page the case maps and its copy-on-write copy (cow.c hugetlb_setup(2, ...))


@dataclass(frozen=True)
class Pool:
    """One size's counters (/sys/kernel/mm/hugepages/hugepages-<kB>kB/)."""

    size: int
    nr: int
    free: int
    resv: int

    def __str__(self) -> str:
        return f"{system.size_label(self.size)} hugetlb pool: nr_hugepages {self.nr}, " \
               f"free_hugepages {self.free}, resv_hugepages {self.resv}"


def read(size: int) -> Pool:
    c = {k: system.hugetlb_counter(size, k) for k in ("nr_hugepages", "free_hugepages", "resv_hugepages")}
    return Pool(size, c["nr_hugepages"], c["free_hugepages"], c["resv_hugepages"])


def require_before_map(size: int, pages: int = FORK_PAGES) -> Pool:
    """Before the case maps its hugetlb memory: ``pages`` free pages.

    Skips when the pool itself is smaller (a pool-size probe: the prepare step could not grow
    it); fails with the numbers when the pool is big enough but its pages are not free.
    """
    p = read(size)
    if p.nr < pages:
        pytest.skip(f"{p}: a fork() case needs {pages} pages")
    if p.free < pages:
        raise AssertionError(f"{p} before mapping: {pages} free pages needed "
                             "(the pool was grown for this case; a setup problem of the pool, not a kernel verdict)")
    return p


def require_spare_before_fork(size: int, spare: int = FORK_PAGES - 1) -> Pool:
    """Right before fork(), with the case's page mapped and populated: ``spare`` pages still
    free for a copy-on-write copy, else a failure with the numbers."""
    p = read(size)
    if p.free < spare:
        raise AssertionError(f"{p} right before fork(): {spare} free page(s) needed for a copy-on-write "
                             "(a setup problem of the pool, not a kernel verdict)")
    return p
