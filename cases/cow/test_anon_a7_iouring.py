"""A7-A8: io_uring fixed buffers, R/W longterm pins (cow.c cases 7-8, liburing-only upstream).

A page registered as an io_uring fixed buffer is pinned R/W for the long term; the page
table must keep mapping exactly that page.  A7: after the range is mapped R/O and back R/W,
a write through the page table must land in the pinned page.  A8: fork() must not COW-share
the pinned page with the child, so the parent's write lands in the pinned page too.
Checked by WRITE_FIXED of the buffer to a file: the file must equal memory.  Raw io_uring
syscalls (lib.kernel.iouring); skipped with the reason where io_uring or the registration
(RLIMIT_MEMLOCK) is refused.
Reference: tools/testing/selftests/mm/cow.c do_test_iouring.
"""

from cases.cow import oracles
from cases.cow.matrix import anon_cases


@anon_cases("R/O-mapping a page registered as iouring fixed buffer")
def test_iouring_ro(backing) -> None:
    with backing.setup() as m:
        bad = oracles.iouring_or_skip(m.addr, m.size, use_fork=False)
    assert not bad, bad


@anon_cases("fork() with an iouring fixed buffer")
def test_iouring_fork(backing) -> None:
    with backing.setup() as m:
        bad = oracles.iouring_or_skip(m.addr, m.size, use_fork=True)
    assert not bad, bad
