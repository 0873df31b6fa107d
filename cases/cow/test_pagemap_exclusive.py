"""Beyond cow.c: COW sharing made visible in /proc/self/pagemap, on every page of the range.

Documentation/admin-guide/mm/pagemap.rst: bit 56 is "page exclusively mapped", bits 0-54
the PFN (root only); for a page of a large folio (THP, mTHP) bit 56 is clear whenever the
folio is maybe mapped in another process.  For a base page, a PMD-mapped THP and a
PTE-mapped THP alike, every base page of the range must read: exclusive in the process that
wrote it before fork(); not exclusive in both processes right after fork(), with the same
PFN (COW-shared); after the writer's write faults, exclusive in the writer with a PFN that
differs from the original and from the other process's (a PMD-mapped THP is split and its
pages copied one by one, fs/proc/task_mmu.c reports per 4 kB entry), while the other
process keeps the original PFN.  That the other process's page reads exclusive again once
the writer copied it away is asserted for base pages always and for large folios where
the kernel keeps per-page mapcounts (not with CONFIG_NO_PAGE_MAPCOUNT, whose folio-level
"maybe mapped shared" may stay set, as pagemap.rst says; an unreadable config leaves it
unasserted and says so).  See cases/cow/oracles.py exclusivity_problems.
"""

import pytest

from cases.cow import oracles
from cases.cow.backings import AnonBacking
from lib import check
from lib.kernel import abi, libc, needs, system

BACKINGS = [AnonBacking("base")]
if system.pmd_size():
    BACKINGS.append(AnonBacking("pmd", system.pmd_size()))
BACKINGS += [AnonBacking("pte", s) for s in system.thp_sizes()]
DESC = "pagemap exclusive bit and PFNs across COW"


@pytest.mark.parametrize("backing", BACKINGS, ids=[f"{DESC} ... {b.suffix}" for b in BACKINGS])
def test_pagemap_exclusive(backing) -> None:
    needs.root("PFNs in /proc/<pid>/pagemap")
    with backing.setup() as m:
        # khugepaged may collapse a PTE-mapped THP into a new folio at any scan (no COW
        # involved; seen once here: every PFN new and shared right after fork()).  That is not
        # what this case checks, so VM_NOHUGEPAGE keeps khugepaged off the range while it
        # observes; pages already mapped are left as they are.
        libc.madvise(m.addr, m.size, abi.Madv.NOHUGEPAGE)
        obs = oracles.observe_cow(m.addr, m.size)
    for line in oracles.summarize(obs):
        check.diag(f"{backing.suffix}: {line}")
    exact = True if backing.run == "base" else oracles.per_page_mapcount()
    if exact is None:
        check.diag("kernel config unreadable: the other process's bit 56 after the COW is not asserted "
                   "(it depends on CONFIG_NO_PAGE_MAPCOUNT)")
    problems = oracles.exclusivity_problems(obs, other_mapcount_exact=bool(exact))
    assert not problems, "; ".join(problems)
