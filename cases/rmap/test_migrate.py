"""rmap.c: a page mapped by many processes is found by the reverse map and moved for all.

Every process of a fork() tree (cases.rmap.tree) maps one page; the worker migrates it to
another NUMA node with move_pages(MPOL_MF_MOVE_ALL); every process must then map the page at
the worker's new PFN (rmap.c has_same_pfn).  Backings as upstream: a private anonymous page
shared copy-on-write after fork() (anon), a shared memory file (shm: here a memfd), a regular
file (file), and per-process pages merged into one by KSM (ksm); ksm_and_mremap merges 16
pages of a range that mremap() moved over another and migrates the KSM page: the whole range
must map the new page.

Migration to another node needs a second NUMA node: rmap.c's fixture skips without one ("Not
enough NUMA nodes available"), as the cases with upstream's names do (a probe of
/sys/devices/system/node/online).  Each case also runs with the page migrated on its own node,
by mbind(MPOL_LOCAL, MPOL_MF_MOVE_ALL) (mkdirty.c's way to migrate: MPOL_LOCAL's empty node
mask makes every page a candidate): the same rmap walk (try_to_migrate over every process that
maps the page) on any machine; a page that did not move after 100 tries is rmap.c's "Failed in
worker" skip.  The tree and its has_same_pfn oracle are also checked by tests/test_rmap_tree.py.
Reference: tools/testing/selftests/mm/rmap.c (case names: its FIXTURE.TEST names).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cases.rmap import tree
from lib import check
from lib.kernel import abi, ksm, libc, memory, needs, pagemap, system
from lib.kernel.pagemap import Pagemap

PAGE = libc.PAGE_SIZE
SEED = 20251  # the tree's shape (rmap.c seeds with time(); a fixed seed makes runs repeatable)


def needs_numa() -> None:
    if len(system.numa_nodes()) <= 1:
        pytest.skip("Not enough NUMA nodes available")


def pfn_of(addr: int) -> int:
    with Pagemap() as pm:
        return pm.entry(addr).pfn or 0


def has_same_pfn(region: list[int]) -> Callable[[tree.Shared], int]:
    """rmap.c has_same_pfn: this process maps the page at ``region[0]`` (set by the tree's
    prepare) at the PFN the worker published, else FAIL_ON_CHECK."""
    def check_pfn(shared: tree.Shared) -> int:
        return 0 if pfn_of(region[0]) == shared.expected_pfn else tree.FAIL_ON_CHECK

    return check_pfn


def move_pages(addr: int, node: int | None) -> tuple[int, int]:
    """move_pages(2) of one page (``node`` None: query); (return value, status)."""
    pages = (ctypes.c_void_p * 1)(addr)
    status = (ctypes.c_int * 1)(0)
    nodes = (ctypes.c_int * 1)(node if node is not None else 0)
    ret = libc.syscall(abi.NR.move_pages, 0, 1, ctypes.addressof(pages),
                       ctypes.addressof(nodes) if node is not None else 0, ctypes.addressof(status),
                       abi.MPOL_MF_MOVE_ALL)
    return ret, status[0]


def try_to_move_page(addr: int) -> int:
    """rmap.c try_to_move_page: to another node, retrying a best-effort migration 100 times."""
    try:
        _, here = move_pages(addr, None)
    except OSError:
        return tree.FAIL_ON_WORK
    others = [n for n in system.numa_nodes() if n != here]
    if not others:
        return tree.FAIL_ON_WORK
    for _ in range(100):
        try:
            ret, _ = move_pages(addr, others[0])
        except OSError:
            return tree.FAIL_ON_WORK
        if ret == 0:
            return 0
    return tree.FAIL_ON_WORK


def mbind_local_move(addr: int) -> int:
    """Migrate the page at ``addr`` on its own node: mbind(MPOL_LOCAL, MPOL_MF_MOVE_ALL); the
    page must end up at another PFN (best effort, retried 100 times as try_to_move_page)."""
    before = pfn_of(addr)
    for _ in range(100):
        try:
            libc.syscall(abi.NR.mbind, addr, PAGE, abi.MPOL_LOCAL, 0, 0, abi.MPOL_MF_MOVE_ALL)
        except OSError:
            return tree.FAIL_ON_WORK
        if pfn_of(addr) not in (0, before):
            return 0
    return tree.FAIL_ON_WORK


@dataclass(frozen=True)
class Mover:
    name: str
    suffix: str
    move: Callable[[int], int]
    numa: bool

    def require(self) -> None:
        if self.numa:
            needs_numa()
        needs.root("MPOL_MF_MOVE_ALL and PFNs")


MOVERS = [Mover("move_pages", "", try_to_move_page, True),
          Mover("mbind", " (migrated on its node by mbind)", mbind_local_move, False)]


def movers(name: str):
    return pytest.mark.parametrize("mover", MOVERS, ids=[f"{name}{m.suffix}" for m in MOVERS])


def judge(res: tree.TreeResult) -> None:
    check.diag(f"{res.processes} processes, worker at level {res.worker_level}")
    if res.error:
        raise AssertionError(f"root of the tree: {res.error}")
    if res.status & tree.FAIL_ON_WORK:
        pytest.skip("Failed in worker")  # rmap.c: SKIP(return, "Failed in worker")
    check.eq(res.status, 0, "processes that map another PFN than the worker's migrated page (status bits)")


def run_tree(mover: Mover, region_addr: list[int], prepare=None) -> None:
    def work(shared: tree.Shared) -> int:
        r = mover.move(region_addr[0])
        if r:
            return r
        shared.expected_pfn = pfn_of(region_addr[0])
        return 0

    judge(tree.propagate_children(SEED, prepare, work, has_same_pfn(region_addr)))


def run_tree_on(mover: Mover, addr: int) -> None:
    """rmap.c's migrate.anon/shm/file: the page at ``addr`` filled with 0xcf, read by every
    process of the tree (its prepare), migrated by the worker."""
    libc.fill(addr, 0xCF, PAGE)
    run_tree(mover, [addr], prepare=lambda: libc.touch_read(addr))


@movers("migrate.anon")
def test_migrate_anon(mover: Mover) -> None:
    mover.require()
    r = memory.anon(PAGE)
    run_tree_on(mover, r.addr)


@movers("migrate.shm")
def test_migrate_shm(mover: Mover) -> None:
    mover.require()
    r = memory.memfd(PAGE, shared=True)
    run_tree_on(mover, r.addr)


@movers("migrate.file")
def test_migrate_file(mover: Mover) -> None:
    mover.require()
    with tempfile.TemporaryDirectory(prefix="kmm-rmap-") as d:
        fd = os.open(f"{d}/kst_rmap_file", os.O_CREAT | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, PAGE)
        addr = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, fd, 0)
        os.close(fd)
        try:
            run_tree_on(mover, addr)
        finally:
            libc.munmap(addr, PAGE)


@pytest.fixture
def ksm_on(settings, mover: Mover):
    mover.require()
    if not ksm.available():
        pytest.skip(f"accessing \"{ksm.KSM}/run\" failed")
    ksm.prepare(settings)


def _prctl_memory_merge(on: int) -> None:
    ret = libc._libc.prctl(abi.PR_SET_MEMORY_MERGE, on, 0, 0, 0)
    if ret < 0:
        err = ctypes.get_errno()
        pytest.skip(f"PR_SET_MEMORY_MERGE not supported ({os.strerror(err)})")


@movers("migrate.ksm")
def test_migrate_ksm(mover: Mover, ksm_on: None) -> None:
    _prctl_memory_merge(1)
    region = [0]

    def prepare_local_region() -> None:
        region[0] = libc.mmap(PAGE)
        libc.fill(region[0], 0xCF, PAGE)

    def work(shared: tree.Shared) -> int:
        # ksmd runs already (the scan under way may miss the new areas): wait scan by scan
        # until the worker's page is a KSM page, then one more scan for the other processes'
        for _ in range(6):
            ksm.wait_full_scans(1)
            pfn = pfn_of(region[0])
            if pfn and pagemap.kpageflags(pfn) & abi.KPF.KSM:
                break
        else:
            return tree.FAIL_ON_WORK
        ksm.wait_full_scans(1)
        r = mover.move(region[0])
        shared.expected_pfn = pfn_of(region[0])
        return r

    judge(tree.propagate_children(SEED, prepare_local_region, work, has_same_pfn(region)))


@movers("migrate.ksm_and_mremap")
def test_migrate_ksm_and_mremap(mover: Mover, ksm_on: None) -> None:
    nr = 16
    region = libc.mmap(2 * nr * PAGE)
    libc.fill(region, 0x77, 2 * nr * PAGE)
    got = libc.mremap(region + nr * PAGE, nr * PAGE, nr * PAGE, abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, region)
    check.eq(got, region, "mremap() of the second half over the first")
    libc.madvise(region, nr * PAGE, abi.Madv.MERGEABLE)
    ksm.wait_merged(region, nr * PAGE)
    old = pfn_of(region)
    check.true(old, "the merged range has a PFN")
    with Pagemap() as pm:
        check.eq({e.pfn for e in pm.entries(region, nr)}, {old}, "PFNs of the range after KSM merged it")
    check.eq(mover.move(region), 0, "migrating the KSM page")
    new = pfn_of(region)
    check.true(new and new != old, f"the KSM page moved (PFN {old:#x} -> {new:#x})")
    with Pagemap() as pm:
        check.eq({e.pfn for e in pm.entries(region, nr)}, {new}, "PFNs of the range after migrating the KSM page")
