"""A3-A6: vmsplice() R/O GUP references across fork() (CVE-2020-29374; cow.c cases 3-6).

A page pinned R/O through vmsplice() must keep the content it had when it was pinned: a
later write through a COW-sharing process must get its own copy, not write into the
pinned page.  A3/A4: the child vmsplice()s and unmaps, the parent writes; A5/A6: the parent
vmsplice()s (before or after fork()) and unmaps, the child writes.  The pipe is read only
after the write; as in A1, the child checks it inherited the parent's content.  On
hugetlb a leak is an XFAIL, as cow.c documents ("harder to fix and nobody really cares");
elsewhere it is a failure.
Reference: tools/testing/selftests/mm/cow.c test_vmsplice_*.
"""

import pytest

from cases.cow import oracles
from cases.cow.backings import FILL
from cases.cow.matrix import anon_cases


def verdict(leak: str, hugetlb: bool) -> None:
    if leak and hugetlb:
        pytest.xfail(leak)
    assert not leak, leak


@anon_cases("vmsplice() + unmap in child")
def test_vmsplice_in_child(backing) -> None:
    with backing.setup() as m:
        leak = oracles.cow_in_parent(m.addr, m.size, False, oracles.child_vmsplice_memcmp, FILL)
    verdict(leak, m.hugetlb)


@anon_cases("vmsplice() + unmap in child with mprotect() optimization")
def test_vmsplice_in_child_mprotect(backing) -> None:
    with backing.setup() as m:
        leak = oracles.cow_in_parent(m.addr, m.size, True, oracles.child_vmsplice_memcmp, FILL)
    verdict(leak, m.hugetlb)


@anon_cases("vmsplice() before fork(), unmap in parent after fork()")
def test_vmsplice_before_fork(backing) -> None:
    with backing.setup() as m:
        leak = oracles.vmsplice_in_parent(m.addr, m.size, before_fork=True, expect=FILL)
    verdict(leak, m.hugetlb)


@anon_cases("vmsplice() + unmap in parent after fork()")
def test_vmsplice_after_fork(backing) -> None:
    with backing.setup() as m:
        leak = oracles.vmsplice_in_parent(m.addr, m.size, before_fork=False, expect=FILL)
    verdict(leak, m.hugetlb)
