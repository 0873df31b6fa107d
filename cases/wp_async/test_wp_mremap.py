"""uffd-wp-mremap: mremap() of a write-protected folio clears uffd-wp (uffd-wp-mremap.c).

A folio of every size (one base page, every THP size with only that size enabled, one
hugetlb page of every size), MAP_PRIVATE or MAP_SHARED anonymous memory (shared anonymous
THP is shmem THP: only that per-size ``shmem_enabled`` is ``always``), optionally paged out,
is registered with UFFDIO_REGISTER_MODE_WP and write-protected: pagemap bit 57 (PM_UFFD_WP)
must then be set on every base page (a present PTE/PMD, a swap entry, or a pte marker).  Then
mremap(MREMAP_MAYMOVE|MREMAP_FIXED) moves it to a new, aligned place.  The uffd was opened
without UFFD_FEATURE_EVENT_REMAP, so the moved range is no longer registered and bit 57 must be
clear on every base page there: a uffd-wp bit kept without a registration would leave a
write-protected page that no monitor will ever resolve (the kernel fix "mm: clear uffd-wp
PTE/PMD state on mremap()", 6.13: mm/mremap.c, mm/huge_memory.c, mm/hugetlb.c).

Names are uffd-wp-mremap.c's: ``test_one_folio(size=<bytes>, private=<bool>, swapout=<bool>,
hugetlb=<bool>)``, in its order.  Skips come from probes (uffd feature bits, the THP or
hugetlb size offered, the hugetlb pool, swap active), and, as upstream, when MADV_PAGEOUT did
not swap the whole folio out.  A THP size that was enabled alone but whose folio the first
write did not populate entirely is ``cannot test`` (upstream fails: "alloc_one_folio()
failed"; no kernel guarantee gives a THP).
Reference: tools/testing/selftests/mm/uffd-wp-mremap.c.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from lib import check
from lib.kernel import abi, hugetlb_pool, libc, memory, memtypes, needs, setup_step, system
from lib.kernel.pagemap import Pagemap
from lib.kernel.uffd import open_for

PAGE = system.PAGE_SIZE
THP_ROOT = system.THP


def _b(v: bool) -> str:
    return "true" if v else "false"


@dataclass(frozen=True)
class Folio:
    """One uffd-wp-mremap.c test: a folio of ``size`` bytes."""

    size: int
    private: bool
    swapout: bool
    hugetlb: bool

    @property
    def name(self) -> str:
        return (f"test_one_folio(size={self.size}, private={_b(self.private)}, swapout={_b(self.swapout)}, "
                f"hugetlb={_b(self.hugetlb)})")

    def __str__(self) -> str:
        return self.name

    @property
    def thp(self) -> bool:
        return not self.hugetlb and self.size > PAGE

    @property
    def wp_features(self) -> int:
        """PAGEFAULT_FLAG_WP; WP_HUGETLBFS_SHMEM too for shmem (shared) and hugetlb memory."""
        return memtypes.wp_feature_for(anonymous=self.private and not self.hugetlb)

    # -- pytest process -------------------------------------------------------------------
    def prepare(self, settings) -> None:
        """uffd-wp-mremap.c main + alloc_one_folio: every anon and shmem THP size ``never``,
        then only this folio's size ``always`` (anon for private, shmem for shared); for
        hugetlb one free page of the size (hugetlb_setup(1, ...))."""
        if self.hugetlb:
            memtypes.grow_pool(settings, self.size, 1)
            return
        if not system.pmd_size():
            return
        if self.thp and self.private:
            memtypes.MemType(memtypes.ANON_THP, self.size).prepare(settings)  # only this anon size
        else:
            for s in system.thp_sizes():
                _set(settings, f"hugepages-{s // system.KiB}kB/enabled", "never")
        for s in system.shmem_thp_sizes():
            want = "always" if self.thp and not self.private and s == self.size else "never"
            _set(settings, f"hugepages-{s // system.KiB}kB/shmem_enabled", want)

    # -- the case -------------------------------------------------------------------------
    def require(self) -> None:
        needs.uffd_features(self.wp_features)
        if self.hugetlb:
            needs.hugetlb_size(self.size)
            if hugetlb_pool.available(self.size) < 1:
                pytest.skip(f"{hugetlb_pool.read(self.size)}: no free unreserved page (the pool could not be grown)")
        elif self.thp:
            needs.thp(self.size)
            if not self.private and self.size not in system.shmem_thp_sizes():
                pytest.skip(f"shmem THP size {system.size_label(self.size)} not offered by this kernel")


def _set(settings, rel: str, value: str) -> None:
    path = f"{THP_ROOT}/{rel}"
    if os.path.exists(path) and system.selected(system.read_text(path, "")) != value:
        settings.thp(rel, value)


def folios() -> list[Folio]:
    """uffd-wp-mremap.c testcases[] x sizes, in its order: base pages, THP sizes, hugetlb sizes."""
    thps = list(system.thp_sizes())
    hugetlbs = sorted(system.hugetlb_sizes())
    out: list[Folio] = []
    for sizes, hugetlb, swaps in (([PAGE], False, (False, True)), (thps, False, (False, True)),
                                  (hugetlbs, True, (False,))):
        for swapout in swaps:
            for private in (False, True):
                out.extend(Folio(s, private, swapout, hugetlb) for s in sizes)
    return out


FOLIOS = folios()


# ---------------------------------------------------------------------------------------
# memory


def mmap_aligned(size: int, prot: int, flags: int) -> int:
    """uffd-wp-mremap.c mmap_aligned: map twice the size, keep the ``size``-aligned middle
    (lib.kernel.memory.aligned_mmap)."""
    return memory.aligned_mmap(size, size, prot, flags)


def alloc_one_folio(f: Folio) -> int:
    """Map, write the first byte, require every base page populated, fill with 1s."""
    flags = abi.MAP_ANONYMOUS | (abi.MAP_PRIVATE if f.private else abi.MAP_SHARED)
    rw = abi.PROT_READ | abi.PROT_WRITE
    if f.thp:
        mem = mmap_aligned(f.size, rw, flags)
    elif f.hugetlb:
        avail = hugetlb_pool.available(f.size)
        try:
            mem = libc.mmap(f.size, rw, flags | abi.MAP_HUGETLB | abi.huge_size_flag(f.size))
        except OSError as e:
            raise setup_step.SetupFailed(setup_step.message(
                f"mmap of one {system.size_label(f.size)} hugetlb page with {avail} free unreserved", e)) from e
    else:
        mem = libc.mmap(f.size, rw, flags)
    libc.touch_write(mem, 1)
    with Pagemap() as pm:
        missing = [i for i, e in enumerate(pm.entries(mem, f.size // PAGE)) if not e.populated]
    if missing:
        libc.munmap(mem, f.size)
        what = f"{len(missing)} of {f.size // PAGE} base pages (first: {missing[0]}) not populated"
        if f.thp:
            raise check.CannotTest(f"alloc_one_folio() failed: {what} after the first write with only "
                                   f"{system.size_label(f.size)} THP enabled (no such THP allocated)")
        raise AssertionError(f"alloc_one_folio() failed: {what} after the first write")
    libc.fill(mem, 1, f.size)
    return mem


# ---------------------------------------------------------------------------------------
# the oracle


def check_uffd_wp_state(bits: list[bool], expect: bool, when: str) -> None:
    """uffd-wp-mremap.c check_uffd_wp_state: bit 57 equals ``expect`` on every base page."""
    bad = [i for i, b in enumerate(bits) if b != expect]
    if bad:
        raise AssertionError(f"uffd-wp not {'set' if expect else 'clear'} for pte {bad[0]}! ({when}; "
                             f"{len(bad)} of {len(bits)} base pages)")


def wp_state(addr: int, size: int) -> list[bool]:
    with Pagemap() as pm:
        return [e.uffd_wp for e in pm.entries(addr, size // PAGE)]


def run_one_folio(f: Folio, protect: bool = True, move: Callable[[int, int, int], int] | None = None) -> None:
    """uffd-wp-mremap.c test_one_folio.  ``protect`` and ``move`` are for the negative
    controls (tests/test_wp_mremap_controls.py): skip the write-protection, replace mremap()."""
    mem = alloc_one_folio(f)
    cleanup = [(mem, f.size)]
    u = None
    try:
        with setup_step.required("userfaultfd + UFFDIO_API"):
            u = open_for(f.wp_features)
        with setup_step.required("UFFDIO_REGISTER (MODE_WP)"):
            u.register(mem, f.size, abi.RegisterMode.WP)
        if protect:
            with setup_step.required("UFFDIO_WRITEPROTECT (MODE_WP)"):
                u.writeprotect(mem, f.size, True)
        if f.swapout:
            libc.madvise(mem, f.size, abi.Madv.PAGEOUT)
            with Pagemap() as pm:
                swapped = sum(e.swapped for e in pm.entries(mem, f.size // PAGE))
            if swapped != f.size // PAGE:
                pytest.skip(f"MADV_PAGEOUT did not work, is swap enabled? ({swapped} of {f.size // PAGE} "
                            "base pages swapped out, swap active)")
        check_uffd_wp_state(wp_state(mem, f.size), True, "after UFFDIO_WRITEPROTECT")
        with setup_step.required("mmap_aligned() of the destination"):
            addr = mmap_aligned(f.size, abi.PROT_NONE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
        cleanup.append((addr, f.size))
        do_move = move or (lambda old, size, new: libc.mremap(old, size, size,
                                                               abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, new))
        with setup_step.required("mremap(MREMAP_MAYMOVE|MREMAP_FIXED)"):
            moved = do_move(mem, f.size, addr)
        cleanup = [(moved, f.size)] + ([(mem, f.size)] if moved != mem else [])
        check_uffd_wp_state(wp_state(moved, f.size), False, "after mremap() without UFFD_FEATURE_EVENT_REMAP")
    finally:
        for a, n in cleanup:
            with contextlib.suppress(OSError):
                libc.munmap(a, n)
        if u is not None:
            u.close()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("f", FOLIOS, ids=[f.name for f in FOLIOS])
def test_wp_mremap(f: Folio, wp_swap: str) -> None:
    f.require()
    if f.swapout and not system.swap_active():
        pytest.skip("MADV_PAGEOUT needs swap: no swap" + (f" ({wp_swap})" if wp_swap else ""))
    run_one_folio(f)
