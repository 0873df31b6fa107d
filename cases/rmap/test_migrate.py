"""rmap.c: a page mapped by many processes is found by the reverse map and moved for all.

Every process of a fork() tree (cases.rmap.tree) maps one page; the worker migrates it to
another NUMA node with move_pages(MPOL_MF_MOVE_ALL); every process must then map the page at
the worker's new PFN (rmap.c has_same_pfn).  Backings as upstream: a private anonymous page
shared copy-on-write after fork() (anon), a shared memory file (shm: here a memfd), a regular
file (file), and per-process pages merged into one by KSM (ksm); ksm_and_mremap merges 16
pages of a range that mremap() moved over another and migrates the KSM page: the whole range
must map the new page.

Migration needs a second NUMA node: rmap.c's fixture skips without one ("Not enough NUMA nodes
available"), as these do (a probe of /sys/devices/system/node/online).  The tree and its
has_same_pfn oracle are checked on any machine by tests/test_rmap_tree.py.
Reference: tools/testing/selftests/mm/rmap.c (case names: its FIXTURE.TEST names).
"""

from __future__ import annotations

import ctypes
import os
import tempfile

import pytest

from cases.rmap import tree
from lib import check
from lib.kernel import abi, ksm, libc, memory, needs, system
from lib.kernel.pagemap import Pagemap

PAGE = libc.PAGE_SIZE
SEED = 20251  # the tree's shape (rmap.c seeds with time(); a fixed seed makes runs repeatable)


def needs_numa() -> None:
    if len(system.numa_nodes()) <= 1:
        pytest.skip("Not enough NUMA nodes available")


def pfn_of(addr: int) -> int:
    with Pagemap() as pm:
        return pm.entry(addr).pfn or 0


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


def run_tree(region_addr: list[int], prepare=None) -> None:
    def work(shared: tree.Shared) -> int:
        r = try_to_move_page(region_addr[0])
        if r:
            return r
        shared.expected_pfn = pfn_of(region_addr[0])
        return 0

    def has_same_pfn(shared: tree.Shared) -> int:
        return 0 if pfn_of(region_addr[0]) == shared.expected_pfn else tree.FAIL_ON_CHECK

    res = tree.propagate_children(SEED, prepare, work, has_same_pfn)
    check.diag(f"{res.processes} processes, worker at level {res.worker_level}")
    if res.error:
        raise AssertionError(f"root of the tree: {res.error}")
    if res.status & tree.FAIL_ON_WORK:
        pytest.skip("Failed in worker")  # rmap.c: SKIP(return, "Failed in worker")
    check.eq(res.status, 0, "processes that map another PFN than the worker's migrated page (status bits)")


@pytest.mark.tap("migrate.anon")
def test_migrate_anon() -> None:
    needs_numa()
    needs.root("move_pages(MPOL_MF_MOVE_ALL) and PFNs")
    r = memory.anon(PAGE)
    libc.fill(r.addr, 0xCF, PAGE)
    run_tree([r.addr], prepare=lambda: libc.touch_read(r.addr))


@pytest.mark.tap("migrate.shm")
def test_migrate_shm() -> None:
    needs_numa()
    needs.root("move_pages(MPOL_MF_MOVE_ALL) and PFNs")
    r = memory.memfd(PAGE, shared=True)
    libc.fill(r.addr, 0xCF, PAGE)
    run_tree([r.addr], prepare=lambda: libc.touch_read(r.addr))


@pytest.mark.tap("migrate.file")
def test_migrate_file() -> None:
    needs_numa()
    needs.root("move_pages(MPOL_MF_MOVE_ALL) and PFNs")
    with tempfile.TemporaryDirectory(prefix="kmm-rmap-") as d:
        fd = os.open(f"{d}/kst_rmap_file", os.O_CREAT | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, PAGE)
        addr = libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, fd, 0)
        os.close(fd)
        libc.fill(addr, 0xCF, PAGE)
        try:
            run_tree([addr], prepare=lambda: libc.touch_read(addr))
        finally:
            libc.munmap(addr, PAGE)


@pytest.fixture
def ksm_on(settings):
    needs_numa()
    if not ksm.available():
        pytest.skip(f"accessing \"{ksm.KSM}/run\" failed")
    ksm.prepare(settings)


def _prctl_memory_merge(on: int) -> None:
    ret = libc._libc.prctl(abi.PR_SET_MEMORY_MERGE, on, 0, 0, 0)
    if ret < 0:
        err = ctypes.get_errno()
        pytest.skip(f"PR_SET_MEMORY_MERGE not supported ({os.strerror(err)})")


@pytest.mark.tap("migrate.ksm")
def test_migrate_ksm(ksm_on) -> None:
    needs.root("move_pages(MPOL_MF_MOVE_ALL) and PFNs")
    _prctl_memory_merge(1)
    region = [0]

    def prepare_local_region() -> None:
        region[0] = libc.mmap(PAGE)
        libc.fill(region[0], 0xCF, PAGE)

    def work(shared: tree.Shared) -> int:
        ksm.wait_full_scans(3)  # ksmd runs already: the scan under way may miss the new areas
        r = try_to_move_page(region[0])
        shared.expected_pfn = pfn_of(region[0])
        return r

    def has_same_pfn(shared: tree.Shared) -> int:
        return 0 if pfn_of(region[0]) == shared.expected_pfn else tree.FAIL_ON_CHECK

    res = tree.propagate_children(SEED, prepare_local_region, work, has_same_pfn)
    if res.error:
        raise AssertionError(f"root of the tree: {res.error}")
    if res.status & tree.FAIL_ON_WORK:
        pytest.skip("Failed in worker")
    check.eq(res.status, 0, "processes that map another PFN than the worker's migrated KSM page (status bits)")


@pytest.mark.tap("migrate.ksm_and_mremap")
def test_migrate_ksm_and_mremap(ksm_on) -> None:
    needs.root("move_pages(MPOL_MF_MOVE_ALL) and PFNs")
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
    check.eq(try_to_move_page(region), 0, "migrating the KSM page")
    new = pfn_of(region)
    check.true(new and new != old, f"the KSM page moved (PFN {old:#x} -> {new:#x})")
    with Pagemap() as pm:
        check.eq({e.pfn for e in pm.entries(region, nr)}, {new}, "PFNs of the range after migrating the KSM page")
