"""cow.c's anon-THP collapse cases: COW exclusivity survives MADV_COLLAPSE.

Upstream: tools/testing/selftests/mm/cow.c anon_thp_test_cases (David Hildenbrand, "selftests/
vm: cow: Add COW tests for collapsing of PTE-mapped anon THP"; review by Zach O'Keefe).  A THP
is PTE-mapped (mprotect of its 2nd subpage R/O and back), then collapsed before fork(), or
after fork() with all, the lower or the upper half COW-shared with the child (MADV_DONTFORK
on the other half, MADV_DOFORK again so the VMAs merge).  The parent then writes the whole
THP; the child must still see the old contents ("No leak from parent into child").  Each case
guards how an (in-place) collapse must treat PG_anon_exclusive: all exclusive (clear it on the
tails), none exclusive (do not set it on the head), mixed (must not collapse in place).
Where MADV_COLLAPSE refuses, the case SKIPs with the errno, as upstream does (the fully
shared case did on kernels that required one writable PTE).

The range is confirmed PTE-mapped before and PMD-mapped after the collapse (pagemap PFNs +
/proc/kpageflags folio order, smaps AnonHugePages); the evidence is in the failure message.
TAP names are the upstream ones.  PMD size only, as upstream's run_anon_thp_test_cases: MADV_COLLAPSE
collapses to the PMD size only (cases/thp_collapse/probes.py).
"""

import pytest

from cases.thp_collapse import matrix, regions
from cases.thp_collapse.matrix import PAGE_SIZE
from lib import check
from lib.kernel import abi, libc, system, tasks
from lib.kernel.pagemap import Pagemap
from lib.kernel.tasks import CommPipes

CASES = {
    "unshared": "Basic COW after fork() when collapsing before fork()",
    "fully shared": "Basic COW after fork() when collapsing after fork() (fully shared)",
    "lower shared": "Basic COW after fork() when collapsing after fork() (lower shared)",
    "upper shared": "Basic COW after fork() when collapsing after fork() (upper shared)",
}


class CowSize:
    """A THP size as a parameter: only that anon size enabled ('always', cow.c run_with_thp)."""

    def __init__(self, test: str, size: int) -> None:
        self.test, self.size = test, size

    def prepare(self, settings) -> None:
        if matrix.PMD_SIZE:
            settings.thp_only_size(self.size, "always")

    @property
    def name(self) -> str:
        suffix = "" if self.size == matrix.PMD_SIZE else f" with THP ({system.size_label(self.size)})"
        return CASES[self.test] + suffix


def params() -> list:
    return [pytest.param(CowSize(t, matrix.PMD_SIZE), id=CowSize(t, matrix.PMD_SIZE).name) for t in CASES]


def child_memcmp(addr: int, size: int, pipes: CommPipes) -> int:
    """The child side (cow.c child_memcmp_fn): snapshot, signal, wait, compare; 0 = no leak."""
    old = libc.read(addr, size)
    pipes.child_ready.signal()
    pipes.parent_ready.wait()
    return 0 if libc.compare(addr, old) else 1


def leak_check(addr: int, size: int, child_part: tuple[int, int], between, modify=None) -> None:
    """Oracle: fork; the child snapshots ``child_part`` (offset, length); ``between()`` runs in
    the parent once the child is ready (the collapse); the parent writes 0xff over the range;
    the child must still read its snapshot.  Raises AssertionError("Leak from parent into
    child") otherwise; a refusal raised by ``between`` is passed on after releasing the child."""
    pipes = CommPipes()
    off, length = child_part
    pid = tasks.fork_call(lambda: child_memcmp(addr + off, length, pipes))
    try:
        pipes.child_ready.wait()
        try:
            between()
        except BaseException:
            pipes.parent_ready.signal()
            tasks.reap(pid, 5)
            raise
        (modify or (lambda: libc.fill(addr, 0xFF, size)))()
        pipes.parent_ready.signal()
        r = tasks.reap(pid)
    finally:
        pipes.close()
    if r.exit_code != 0:
        raise AssertionError("Leak from parent into child" if r.exit_code == 1 else r.describe())


def collapse_or_skip(addr: int, size: int, when: str) -> None:
    """MADV_COLLAPSE (no retry, as cow.c); SKIP with the errno when the kernel refuses, else
    confirm the range is now one PMD-mapped THP."""
    try:
        libc.madvise(addr, size, abi.Madv.COLLAPSE)
    except OSError as e:
        pytest.skip(f"MADV_COLLAPSE failed: {e.strerror} ({when}; {regions.describe(addr, size)})")
    if not regions.pmd_mapped_thp(addr, size):
        raise AssertionError(f"after MADV_COLLAPSE {when}: range is not one PMD-mapped THP "
                             f"({regions.describe(addr, size)})")
    check.note(f"PMD-mapped after MADV_COLLAPSE {when}: {regions.describe(addr, size)}")


@pytest.mark.parametrize("p", params())
def test_cow_collapse(p: CowSize) -> None:
    size = p.size
    v = matrix.Variant("cow", "madvise", matrix.ANON, size)
    matrix.require(v)
    r = regions.setup_area(matrix.ANON, size)
    libc.madvise(r.addr, size, abi.Madv.HUGEPAGE)
    libc.touch_write(r.addr, 0)
    with Pagemap() as pm:
        if not pm.entry(r.addr + size - PAGE_SIZE).populated:
            pytest.skip("Did not get a THP populated")
    libc.fill(r.addr, 0x01, size)
    # PTE-map the THP: mprotect the 2nd subpage R/O and back (cow.c prelude).  khugepaged,
    # woken when prepare() enabled this size, may collapse the range right back (a
    # precondition race, not the behaviour under test): PTE-map again, at most three times.
    for _ in range(3):
        libc.mprotect(r.addr + PAGE_SIZE, PAGE_SIZE, abi.PROT_READ)
        libc.mprotect(r.addr + PAGE_SIZE, PAGE_SIZE, regions.PROT_RW)
        if regions.pte_mapped_thp(r.addr, size):
            break
    else:
        raise AssertionError(f"prelude: THP is not PTE-mapped ({regions.describe(r.addr, size)})")
    check.note(f"PTE-mapped before the collapse: {regions.describe(r.addr, size)}")
    half = size // 2
    if p.test == "unshared":
        collapse_or_skip(r.addr, size, "before fork()")
        leak_check(r.addr, size, (0, size), lambda: None)
        return
    if p.test == "lower shared":
        libc.madvise(r.addr + half, half, abi.Madv.DONTFORK)
        part = (0, half)
    elif p.test == "upper shared":
        libc.madvise(r.addr, half, abi.Madv.DONTFORK)
        part = (half, half)
    else:
        part = (0, size)

    def after_fork() -> None:
        if p.test != "fully shared":
            libc.madvise(r.addr, size, abi.Madv.DOFORK)  # merge the VMAs again so the range can collapse
        collapse_or_skip(r.addr, size, f"after fork() ({p.test})")

    leak_check(r.addr, size, part, after_fork)
