"""N1-N3: COW of non-anonymous pages in private mappings (cow.c non_anon_test_cases).

Pages mapped into a private mapping without being anonymous (the shared zeropage, the huge
zeropage, pagecache pages of memfd, tmpfile and hugetlb memfd) are COW-shared with every
other mapping of them, fork() or not.  N1: a write to the private mapping must not show in
a second (shared, R/O) mapping.  N2/N3: a R/O longterm pin (GUP, GUP-fast) of the private
mapping must unshare first, so a write through the page table is visible through the pin
(needs gup_test; skipped with the reason without it).
Reference: tools/testing/selftests/mm/cow.c test_cow, test_ro_pin, test_ro_fast_pin.
"""

import pytest

from cases.cow import oracles
from cases.cow.matrix import non_anon_cases


@non_anon_cases("Basic COW")
def test_cow(backing) -> None:
    with backing.setup() as m:
        bad = oracles.non_anon_cow(m.addr, m.saddr, m.size)
    assert not bad, bad


def pin(backing, gup_test, fast: bool) -> None:
    if gup_test.path is None:
        pytest.skip(gup_test.reason)
    with backing.setup() as m:
        bad = oracles.ro_pin(m.addr, m.size, oracles.RO_PIN, fast, gup_test)
    assert not bad, bad


@non_anon_cases("R/O longterm GUP pin")
def test_ro_pin(backing, gup_test) -> None:
    pin(backing, gup_test, fast=False)


@non_anon_cases("R/O longterm GUP-fast pin")
def test_ro_fast_pin(backing, gup_test) -> None:
    pin(backing, gup_test, fast=True)
