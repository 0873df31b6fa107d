"""The memory the write-protect area runs on, as pytest parameters (cases/wp_async).

Backings (lib.kernel.memtypes names and mappings): ``anon``, ``anon-thp (<N> kB)`` for every
anon THP size the kernel offers (that size alone enabled, through ``prepare(settings)``),
``shmem`` (a memfd, MAP_SHARED), ``hugetlb`` (an MFD_HUGETLB memfd, MAP_SHARED, as
uffd-unit-tests), ``hugetlb-anon`` (MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, as e2b's "hugepage")
and ``hugetlb (1048576 kB)`` (1 GiB pages; the pool is grown to 2 pages).  A WpBacking is a
memtypes.MemType with the area's helpers: a unit is its ``page_size`` (the granularity of
protection and faults: 4 KiB everywhere but hugetlb, where it is the huge page), ``max_units``,
``populate`` (a THP backing must then be THP-mapped) and ``require`` with the WP features of the type.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib.kernel import libc, memory, pagemap, system
from lib.kernel.memtypes import ANON, ANON_THP, HUGETLB, HUGETLB_ANON, SHMEM, MemType

PAGE = libc.PAGE_SIZE
MAX_BASE_UNITS = 64  # base pages (or THP-backed 4 KiB units) one case may map at most


@dataclass(frozen=True)
class WpBacking(MemType):
    def max_units(self) -> int:
        """How many units one case may map at most (1 GiB pages are scarce)."""
        return self.max_pages if self.hugetlb else MAX_BASE_UNITS

    def require(self, features: int = 0, units: int = 1) -> None:
        """Skip (in the case body) unless this backing, ``units`` of it and the WP features of
        the type plus ``features`` are available (probes only)."""
        super().require(self.wp_feature | int(features), pages=min(units, self.max_units()))

    def map(self, units: int) -> memory.Region:  # type: ignore[override]
        """``units`` units of this backing (at most max_units()), not populated (a THP region
        is whole THPs)."""
        return super().map(min(units, self.max_units()))

    def populate(self, r: memory.Region, byte: int = 0x5A) -> None:
        """Write every byte (write faults everywhere); a THP backing must then be THP-mapped."""
        libc.fill(r.addr, byte, r.size)
        if self.thp:
            require_thp(r, self.size)


def require_thp(r: memory.Region, size: int) -> None:
    """Skip unless every ``size`` chunk of ``r`` is backed by one folio of that size."""
    order = (size // PAGE).bit_length() - 1
    with pagemap.Pagemap() as pm:
        for off in range(0, r.size, size):
            e = pm.entry(r.addr + off)
            if not e.present or not e.pfn:
                pytest.skip(f"did not get a THP populated at +{off:#x} (not present)")
            got = pagemap.folio_order(e.pfn)
            if got != order:
                pytest.skip(f"did not get a {system.size_label(size)} THP (folio order {got}, wanted {order})")


def backings() -> list[WpBacking]:
    """anon, every anon THP size, shmem, hugetlb 2 MiB shared and hugetlb-anon, hugetlb 1 GiB."""
    out = [WpBacking(ANON)]
    out += [WpBacking(ANON_THP, s) for s in system.thp_sizes()]
    out.append(WpBacking(SHMEM))
    out += [WpBacking(HUGETLB, 2 * system.MiB), WpBacking(HUGETLB_ANON, 2 * system.MiB),
            WpBacking(HUGETLB, system.GiB)]
    return out


def ids(items: list) -> list[str]:
    return [str(i) for i in items]
