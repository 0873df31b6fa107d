"""Beyond cow.c: COW sharing made visible in /proc/self/pagemap.

Documentation/admin-guide/mm/pagemap.rst: bit 56 is "page exclusively mapped", bits 0-54
the PFN (root only).  For a base page: set on a page the process wrote; clear in both
processes right after fork() while the page is COW-shared (same PFN in both); set in the
writer once its write fault gave it its own page, whose PFN differs, while the other process
keeps the original PFN.  Asserted for base pages.  For THP backings the same observations
are recorded as diagnostics only: what bit 56 reports for pages of large folios changed
between kernels (per-folio vs per-page mapcounts, CONFIG_NO_PAGE_MAPCOUNT).
"""

import pytest

from cases.cow import oracles
from lib import child, needs, system
from lib.cow_backings import AnonBacking

BACKINGS = [AnonBacking("base")]
if system.pmd_size():
    BACKINGS.append(AnonBacking("pmd", system.pmd_size()))
BACKINGS += [AnonBacking("pte", s) for s in system.thp_sizes()]
DESC = "pagemap exclusive bit and PFNs across COW"


@pytest.mark.parametrize("backing", BACKINGS, ids=[f"{DESC} ... {b.suffix}" for b in BACKINGS])
def test_pagemap_exclusive(backing) -> None:
    needs.root("PFNs in /proc/<pid>/pagemap")
    with backing.setup() as m:
        obs = oracles.observe_cow(m.addr, m.size)
    for line in oracles.summarize(obs):
        child.diag(f"{backing.suffix}: {line}")
    if backing.run == "base":
        problems = oracles.exclusivity_problems(obs)
        assert not problems, "; ".join(problems)
