"""A9-A14: R/O longterm GUP pins on R/O-mapped anonymous pages (cow.c cases 9-14).

A R/O longterm pin (FOLL_PIN|FOLL_LONGTERM without FOLL_WRITE) of a page that is COW-shared
(after fork()), was shared (the child has quit) or is exclusive but mapped R/O must unshare
it first, so a later write through the page table is visible through the pin.  GUP and
GUP-fast each.  Needs /sys/kernel/debug/gup_test (CONFIG_GUP_TEST); skipped with the
reason without it.
Reference: tools/testing/selftests/mm/cow.c do_test_ro_pin.
"""

import pytest

from cases.cow import oracles
from cases.cow.matrix import anon_case_table

CASES = [
    ("R/O GUP pin on R/O-mapped shared page", oracles.RO_PIN_SHARED, False),
    ("R/O GUP-fast pin on R/O-mapped shared page", oracles.RO_PIN_SHARED, True),
    ("R/O GUP pin on R/O-mapped previously-shared page", oracles.RO_PIN_PREVIOUSLY_SHARED, False),
    ("R/O GUP-fast pin on R/O-mapped previously-shared page", oracles.RO_PIN_PREVIOUSLY_SHARED, True),
    ("R/O GUP pin on R/O-mapped exclusive page", oracles.RO_PIN_RO_EXCLUSIVE, False),
    ("R/O GUP-fast pin on R/O-mapped exclusive page", oracles.RO_PIN_RO_EXCLUSIVE, True),
]


@anon_case_table(CASES, "test,fast")
def test_ro_pin(backing, gup_test, test: str, fast: bool) -> None:
    if gup_test.path is None:  # before setting up (a 1 GiB page) for nothing
        pytest.skip(gup_test.reason)
    with backing.setup() as m:
        bad = oracles.ro_pin(m.addr, m.size, test, fast, gup_test)
    assert not bad, bad
