"""Collapse and userfaultfd: a collapse must not break MISSING or WP semantics.

Documentation/admin-guide/mm/userfaultfd.rst: a page that is not populated in a range
registered for MISSING faults is reported to the monitor on first access; a page protected
with UFFDIO_WRITEPROTECT traps on write and shows pagemap bit 57.  A collapse that filled a
hole (MISSING) or dropped a protection (WP) would silently bypass the monitor (e2b-ltp D.6:
khugepaged once collapsed ranges that got uffd-wp between its scan rounds, fixed in
6.3-rc7).  mm/khugepaged.c refuses to fill none PTEs of a uffd-armed VMA and refuses
uffd-wp PTEs; either a refusal or a collapse that keeps every state is conformant: the
oracles check the state page by page (MISSING: every hole still absent and its first access
raises a MISSING fault; WP: bit 57 on every protected page and a write to each traps), and
the content of every populated page.  MADV_COLLAPSE's errno is in the notes.
(``minor-collapse`` on shmem belongs to the MISSING area.)
"""

import contextlib
import os

import pytest

from cases.thp_collapse import contexts, matrix, oracles, regions
from cases.thp_collapse.matrix import ANON, PAGE_SIZE, SHMEM, Variant
from lib import check
from lib.kernel import abi, libc, needs
from lib.kernel.pagemap import Pagemap
from lib.kernel.toucher import Toucher
from lib.kernel.uffd import open_for

MODE = abi.RegisterMode


def features(mem: str, mode: int) -> int:
    f = 0
    if mode & MODE.WP:
        f |= abi.Feature.PAGEFAULT_FLAG_WP | (abi.Feature.WP_HUGETLBFS_SHMEM if mem == SHMEM else 0)
    if mode & MODE.MISSING and mem == SHMEM:
        f |= abi.Feature.MISSING_SHMEM
    return int(f)


@contextlib.contextmanager
def registered(area: regions.Area, mode: int):
    feats = features(area.mem, mode)
    needs.uffd_features(feats)
    u = open_for(feats)
    toucher = Toucher("collapse-toucher", pollable=True)
    try:
        u.register(area.addr, area.size, mode)
        yield u, toucher
    finally:
        with contextlib.suppress(OSError):
            u.unregister(area.addr, area.size)
        toucher.close()
        u.close()


def do_collapse(v: Variant, area: regions.Area) -> str:
    """The context's collapse without an expectation; returns what happened (for notes)."""
    libc.madvise(area.addr, area.size, abi.Madv.HUGEPAGE)
    if v.khugepaged:
        contexts.register_with_khugepaged()
        r = contexts.wait_for_scan(lambda: regions.huge_windows(area.addr, 1, v.size, area.mem) == 1, min_scans=1)
        what = f"khugepaged: collapsed={r.collapsed} after {r.scans} full scans"
    else:
        e = contexts.madvise_collapse(area.addr, area.size)
        what = f"MADV_COLLAPSE: {check.errname(e or None)}"
    libc.madvise(area.addr, area.size, abi.Madv.NOHUGEPAGE)
    check.note(f"{what}; {regions.describe(area.addr, area.size, area.mem)}")
    return what


def in_page_cache(fd: int, npages: int) -> set[int]:
    """Pages of a shmem file that hold data (SEEK_DATA/SEEK_HOLE walk)."""
    out: set[int] = set()
    off, end = 0, npages * PAGE_SIZE
    while off < end:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.update(range(d // PAGE_SIZE, min(h, end) // PAGE_SIZE))
        off = h
    return out


def missing_kept(u, area: regions.Area, holes: list[int], toucher: Toucher) -> None:
    """Oracle: every hole is still unpopulated (pagemap; for shmem also not in the page cache)
    and a read of it raises a MISSING fault (resolved with a zero page)."""
    with Pagemap() as pm:
        entries = pm.entries(area.addr, area.size // PAGE_SIZE)
    filled = [i for i in holes if entries[i].present]
    if area.mem == SHMEM:
        cached = in_page_cache(area.fd, area.size // PAGE_SIZE)
        filled += [i for i in holes if i in cached and i not in filled]
    if filled:
        raise AssertionError(f"{len(filled)} hole(s) of the MISSING-registered range got populated, first {filled[:8]}")
    for i in holes:
        a = area.page(i)
        m = oracles.touch_outcome(u, toucher, "r", a)
        if m is None:
            raise AssertionError(f"read of hole {i} raised no MISSING fault")
        if m.is_wp or (m.address & ~(PAGE_SIZE - 1)) != a:
            raise AssertionError(f"read of hole {i}: unexpected uffd message {m}")
        u.zeropage(a, PAGE_SIZE)
        oracles.wait_done(toucher)


MEMS = (ANON, SHMEM)


def uvariants(case: str, ctxs=("madvise", "khugepaged")) -> list:
    return matrix.params(case, ctxs=ctxs, mems=MEMS, sizes=False)


@pytest.mark.parametrize("v", uvariants("collapse of MISSING-registered range with holes"))
def test_collapse_missing_holes(v: Variant) -> None:
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, v.size)
    holes = list(range(1, v.nr, 2))
    for i in holes:  # punch the holes (anon: zap; shmem: drop from the page cache)
        libc.madvise(area.page(i), PAGE_SIZE, abi.Madv.REMOVE if v.mem == SHMEM else abi.Madv.DONTNEED)
    with registered(area, MODE.MISSING) as (u, toucher):
        do_collapse(v, area)
        for i in range(0, v.nr, 2):
            regions.validate(area.addr, i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
        missing_kept(u, area, holes, toucher)


@pytest.mark.parametrize("v", uvariants("collapse of MISSING-registered populated range", ctxs=("madvise",)))
def test_collapse_missing_full(v: Variant) -> None:
    """No hole: the collapse may proceed (it does on 6.18); contents must be kept and, if it
    collapsed, the range is one PMD-mapped THP."""
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, v.size)
    with registered(area, MODE.MISSING):
        do_collapse(v, area)
        regions.validate(area.addr, 0, v.size)
        if contexts.madvise_collapse(area.addr, area.size) == 0:
            regions.check_huge(area, 1, v.size, "MISSING-registered range after a successful MADV_COLLAPSE")


def wp_case(v: Variant, protect_pages: int) -> None:
    area = regions.setup_area(v.mem, v.size)
    regions.fault(area, 0, v.size)
    with registered(area, MODE.WP) as (u, toucher):
        u.writeprotect(area.addr, protect_pages * PAGE_SIZE, True)
        do_collapse(v, area)
        regions.validate(area.addr, 0, v.size)
        oracles.wp_kept(u, area.addr, v.nr, [i < protect_pages for i in range(v.nr)], toucher)
        regions.validate(area.addr, 0, v.size)


@pytest.mark.parametrize("v", uvariants("collapse of uffd-wp protected range"))
def test_collapse_wp(v: Variant) -> None:
    """Every subpage protected: after the collapse attempt each still has bit 57 and traps."""
    matrix.require(v)
    wp_case(v, v.nr)


@pytest.mark.parametrize("v", uvariants("collapse of partly uffd-wp protected range"))
def test_collapse_wp_partial(v: Variant) -> None:
    """The lower half protected: those pages stay protected, the upper half stays writable."""
    matrix.require(v)
    wp_case(v, v.nr // 2)
