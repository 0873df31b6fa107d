"""What splitting a THP's mapping keeps: content, PFNs, uffd-wp bits, soft-dirty bits.

split_huge_page_test.c splits through <debugfs>/split_huge_pages and then checks that every
byte is intact ("%ld byte corrupted") and that the THP is gone; its split_pte_mapped_thp
first PTE-maps the THPs by mremap() of single subpages.  Without debugfs (this suite never
mounts it) the split here is the one the kernel does itself when an operation covers part
of a THP: mprotect() of one subpage, munmap() of one subpage, mremap() of one subpage
(split_pte_mapped_thp's own step), and, for the uffd-wp bit, UFFDIO_WRITEPROTECT clearing
one subpage.  For a PMD-mapped THP each of these splits the PMD into PTEs
(__split_huge_pmd); an mTHP is PTE-mapped already, and the operation changes one PTE (a partly
unmapped folio is queued for the deferred split).  After it, every page keeps:

* its content (split_huge_page_test.c's byte check) and its PFN: splitting a mapping
  remaps the same pages, it copies nothing;
* the uffd-wp bit of a write-protected range: __split_huge_pmd_locked carries
  pmd_uffd_wp() into every PTE (Documentation/admin-guide/mm/userfaultfd.rst: protection
  lasts until resolved), so only the page UFFDIO_WRITEPROTECT cleared loses it;
* the soft-dirty bit (pmd_soft_dirty() carried the same way;
  Documentation/admin-guide/mm/soft-dirty.rst), where the kernel has CONFIG_MEM_SOFT_DIRTY.

Reference: tools/testing/selftests/mm/split_huge_page_test.c (split_pmd_thp_to_order,
split_pte_mapped_thp); mm/huge_memory.c __split_huge_pmd_locked.  Every anon THP size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cases.thp_split import oracles
from lib import check
from lib.kernel import abi, libc, memtypes, needs, pagemap, system, uffd
from lib.kernel.memtypes import MemType
from lib.kernel.pagemap import Pagemap

PAGE = libc.PAGE_SIZE
THPS = memtypes.mem_types((memtypes.ANON_THP,))


@dataclass
class Split:
    """A THP after a split: ``pages`` maps each page still mapped to its (address now, index
    before); ``wp_cleared`` the indices the split unprotected."""

    pages: list[tuple[int, int]]
    wp_cleared: set[int]


def _victim(npages: int) -> int:
    return npages // 2 + 1 if npages > 2 else 1


def split_mprotect(addr: int, npages: int, u: uffd.Userfaultfd | None) -> Split:
    v = _victim(npages)
    libc.mprotect(addr + v * PAGE, PAGE, abi.PROT_READ)
    return Split([(addr + i * PAGE, i) for i in range(npages)], set())


def split_munmap(addr: int, npages: int, u: uffd.Userfaultfd | None) -> Split:
    v = _victim(npages)
    libc.munmap(addr + v * PAGE, PAGE)
    return Split([(addr + i * PAGE, i) for i in range(npages) if i != v], set())


def split_mremap(addr: int, npages: int, u: uffd.Userfaultfd | None) -> Split:
    v = _victim(npages)
    dst = libc.mmap(PAGE, abi.PROT_NONE)
    got = libc.mremap(addr + v * PAGE, PAGE, PAGE, abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, dst)
    check.eq(got, dst, "mremap() of one subpage to the target")
    pages = [(addr + i * PAGE, i) for i in range(npages) if i != v] + [(dst, v)]
    return Split(pages, set())


def split_unprotect(addr: int, npages: int, u: uffd.Userfaultfd | None) -> Split:
    assert u is not None
    v = _victim(npages)
    u.writeprotect(addr + v * PAGE, PAGE, False)
    return Split([(addr + i * PAGE, i) for i in range(npages)], {v})


SplitFn = Callable[[int, int, "uffd.Userfaultfd | None"], Split]
SPLITS: dict[str, SplitFn] = {
    "mprotect() of one subpage": split_mprotect,
    "munmap() of one subpage": split_munmap,
    "mremap() of one subpage": split_mremap,
    "UFFDIO_WRITEPROTECT clearing one subpage": split_unprotect,
}
# what each check can be asked of: a moved page leaves its uffd registration behind (mremap
# without UFFD_FEATURE_EVENT_REMAP), and unprotecting needs a uffd-wp range
CHECKS = {
    "content and PFNs": ["mprotect() of one subpage", "munmap() of one subpage", "mremap() of one subpage"],
    "uffd-wp bits": ["mprotect() of one subpage", "munmap() of one subpage",
                     "UFFDIO_WRITEPROTECT clearing one subpage"],
    "soft-dirty bits": ["mprotect() of one subpage", "munmap() of one subpage", "mremap() of one subpage"],
}
MATRIX = [(c, s, m) for c, splits in CHECKS.items() for s in splits for m in THPS]


def _populate_thp(mem: MemType) -> tuple[int, int]:
    """One THP of ``mem``'s size filled with the page pattern; (address, pages)."""
    r = mem.map(mem.size // PAGE)
    npages = mem.size // PAGE
    oracles.pattern(r.addr, npages)
    with Pagemap() as pm:
        pfn = pm.entry(r.addr).pfn
    if not pfn or pagemap.folio_order(pfn) != (npages.bit_length() - 1):
        pytest.skip(f"Did not get a THP ({system.size_label(mem.size)}) populated")
    return r.addr, npages


def _pfns(pages: list[tuple[int, int]]) -> dict[int, int | None]:
    return {i: e.pfn for i, e in oracles.entries_at(pages).items()}


@pytest.mark.parametrize(("what", "split", "mem"), MATRIX,
                         ids=[f"{s} of a THP keeps {c} on {m}" for c, s, m in MATRIX])
def test_split_keeps(what: str, split: str, mem: MemType) -> None:
    needs.root("PFNs and /proc/kpageflags tell a THP")
    if what == "soft-dirty bits" and system.config_enabled("CONFIG_MEM_SOFT_DIRTY") is False:
        pytest.skip("soft-dirty bits need CONFIG_MEM_SOFT_DIRTY (not set)")
    u = None
    if what == "uffd-wp bits":
        mem.require(features=int(abi.Feature.PAGEFAULT_FLAG_WP))
    else:
        mem.require()
    addr, npages = _populate_thp(mem)
    whole = [(addr + i * PAGE, i) for i in range(npages)]
    before = _pfns(whole)
    try:
        if what == "uffd-wp bits":
            u = uffd.open_for(int(abi.Feature.PAGEFAULT_FLAG_WP))
            u.register(addr, npages * PAGE, abi.RegisterMode.WP)
            u.writeprotect(addr, npages * PAGE, True)
            oracles.bits_kept(oracles.entries_at(whole), lambda e: e.uffd_wp, "uffd-wp",
                              "after UFFDIO_WRITEPROTECT of the whole THP")
        elif what == "soft-dirty bits":
            pagemap.clear_soft_dirty()
            oracles.pattern(addr, npages)
            oracles.bits_kept(oracles.entries_at(whole), lambda e: e.soft_dirty, "soft-dirty",
                              "after writing the THP once soft-dirty was cleared")
        check.note(f"split: {split}")
        s = SPLITS[split](addr, npages, u)
        where = f"after {split}"
        if what == "content and PFNs":
            oracles.content_kept(s.pages, where)
            oracles.pfns_kept({i: before[i] for _, i in s.pages}, _pfns(s.pages), where)
        elif what == "uffd-wp bits":
            kept = [(a, i) for a, i in s.pages if i not in s.wp_cleared]
            oracles.bits_kept(oracles.entries_at(kept), lambda e: e.uffd_wp, "uffd-wp", where)
            cleared = oracles.entries_at([(a, i) for a, i in s.pages if i in s.wp_cleared])
            check.false(any(e.uffd_wp for e in cleared.values()), f"uffd-wp bit on the unprotected page {where}")
            oracles.content_kept(s.pages, where)
        else:
            oracles.bits_kept(oracles.entries_at(s.pages), lambda e: e.soft_dirty, "soft-dirty", where)
            oracles.content_kept(s.pages, where)
    finally:
        if u is not None:
            u.close()
