"""A1-A2: basic COW after fork() on anonymous memory (cow.c anon_test_cases 1-2).

After fork(), parent and child share the anonymous pages copy-on-write; a write by either
must give the writer its own copy, so the other never observes it.  The parent modifies
(optionally after mprotect(PROT_READ) and back, which must not map the shared pages
writable directly); the child must still read the old content.  Beyond cow.c, the child
first checks that it reads the parent's content at all (0x01): a fork() that dropped the
private mapping would otherwise pass (the child would snapshot zeroes).
Reference: tools/testing/selftests/mm/cow.c test_cow_in_parent{,_mprotect}.
"""

from cases.cow import oracles
from cases.cow.backings import FILL
from cases.cow.matrix import anon_cases


@anon_cases("Basic COW after fork()")
def test_cow_after_fork(backing) -> None:
    with backing.setup() as m:
        leak = oracles.cow_in_parent(m.addr, m.size, do_mprotect=False, expect=FILL)
    assert not leak, leak


@anon_cases("Basic COW after fork() with mprotect() optimization")
def test_cow_after_fork_mprotect(backing) -> None:
    with backing.setup() as m:
        leak = oracles.cow_in_parent(m.addr, m.size, do_mprotect=True, expect=FILL)
    assert not leak, leak
