"""The memory the write-protect area runs on, as pytest parameters (cases/wp_async).

Backings: ``anon`` (4 KiB pages), ``anon THP (<N> kB)`` for every anon THP size the kernel
offers (that size alone enabled, through ``prepare(settings)``), ``shmem`` (a memfd, MAP_SHARED),
``hugetlb`` (an MFD_HUGETLB memfd, MAP_SHARED, as uffd-unit-tests), ``hugetlb-private``
(MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, as e2b's "hugepage") and ``hugetlb (1048576 kB)``
(1 GiB pages; the pool is grown to 2 pages).  ``unit`` is the granularity of protection
and faults: 4 KiB everywhere but hugetlb, where it is the huge page.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest

from lib.kernel import abi, hugetlb_pool, libc, memory, needs, pagemap, system
from lib.kernel.backing import wp_feature_for

PAGE = libc.PAGE_SIZE
F = abi.Feature


@dataclass(frozen=True)
class WpBacking:
    kind: str  # anon | thp | shmem | hugetlb | hugetlb-private
    size: int = 0  # THP size, or hugetlb page size

    # -- naming ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.kind == "thp":
            return f"anon THP ({system.size_label(self.size)})"
        if self.hugetlb:
            return f"{self.kind} ({system.size_label(self.size)})"
        return self.kind

    def __str__(self) -> str:
        return self.name

    # -- properties -----------------------------------------------------------------------
    @property
    def hugetlb(self) -> bool:
        return self.kind.startswith("hugetlb")

    @property
    def anon(self) -> bool:
        """Anonymous memory (a zap drops uffd-wp markers there; file memory keeps them)."""
        return self.kind in ("anon", "thp")

    @property
    def unit(self) -> int:
        return self.size if self.hugetlb else PAGE

    @property
    def wp_features(self) -> int:
        return wp_feature_for(self.anon)

    @property
    def missing_features(self) -> int:
        if self.hugetlb:
            return int(F.MISSING_HUGETLBFS)
        if self.kind == "shmem":
            return int(F.MISSING_SHMEM)
        return 0

    @property
    def pool_pages(self) -> int:
        return 2 if self.size >= system.GiB else 16

    def max_units(self) -> int:
        """How many units one case may map at most (1 GiB pages are scarce)."""
        return 2 if self.hugetlb and self.size >= system.GiB else 64

    # -- pytest hooks ---------------------------------------------------------------------
    def prepare(self, settings) -> None:
        """Runs in the pytest process before the case: THP size / hugetlb pool."""
        if self.kind == "thp":
            settings.thp_only_size(self.size)
        elif self.hugetlb and self.size in system.hugetlb_sizes():
            settings.hugetlb(self.size, self.pool_pages)

    def require(self, features: int = 0, units: int = 1) -> None:
        """Skip (in the case body) unless this backing, ``units`` of it and ``features`` are available."""
        if self.kind == "thp":
            needs.thp(self.size)
        if self.hugetlb:
            needs.hugetlb_size(self.size)
            pool = hugetlb_pool.read(self.size)
            want = min(units, self.max_units())
            if pool.unreserved < want:
                pytest.skip(f"only {pool.free} free ({pool.resv} reserved) {system.size_label(self.size)} "
                            f"hugetlb pages, need {want}")
        needs.uffd_features(self.wp_features | int(features))

    # -- memory ---------------------------------------------------------------------------
    def map(self, units: int) -> memory.Region:
        """``units`` units of this backing, not populated (a THP region is whole THPs)."""
        units = min(units, self.max_units())
        if self.kind == "anon":
            return memory.anon(units * PAGE)
        if self.kind == "thp":
            size = -(-units * PAGE // self.size) * self.size
            r = memory.thp(size, self.size)
            return r
        if self.kind == "shmem":
            r = memory.memfd(units * PAGE, shared=True)
            r.kind = "shmem"
            return r
        try:
            if self.kind == "hugetlb":
                return memory.hugetlb(units * self.size, self.size, shared=True, via_memfd=True)
            if self.kind == "hugetlb-private":
                return memory.hugetlb(units * self.size, self.size, shared=False, via_memfd=False)
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            pool = hugetlb_pool.read(self.size)
            if pool.unreserved >= units:
                # The pool had room for the reservation: refusing it is the kernel's doing.
                raise AssertionError(f"setup step failed: mmap of {units} {system.size_label(self.size)} hugetlb "
                                     f"pages refused ({e.strerror}) with room in the {pool}") from e
            pytest.skip(f"{units} {system.size_label(self.size)} hugetlb pages not reservable ({e.strerror}; {pool})")
        raise ValueError(self.kind)

    def populate(self, r: memory.Region, byte: int = 0x5A) -> None:
        """Write every byte (write faults everywhere); a THP backing must then be THP-mapped."""
        libc.fill(r.addr, byte, r.size)
        if self.kind == "thp":
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
    """anon, every anon THP size, shmem, hugetlb 2 MiB shared and private, hugetlb 1 GiB."""
    out = [WpBacking("anon")]
    out += [WpBacking("thp", s) for s in system.thp_sizes()]
    out.append(WpBacking("shmem"))
    out += [WpBacking("hugetlb", 2 * system.MiB), WpBacking("hugetlb-private", 2 * system.MiB),
            WpBacking("hugetlb", system.GiB)]
    return out


def ids(items: list) -> list[str]:
    return [str(i) for i in items]
