"""The memory types of the userfaultfd areas, as data (uffd-unit-tests' mem types).

``anon``, ``shmem``, ``shmem-private`` (still MAP_SHARED upstream: only the test logic
differs), ``hugetlb`` (an MFD_HUGETLB memfd, MAP_SHARED) and ``hugetlb-private`` (the same,
MAP_PRIVATE).  The hugetlb types exist for every hugetlb size the kernel offers; the default
size (2 MiB here) keeps the upstream name, other sizes carry it: ``hugetlb (1048576 kB)``.

A MemType is a pytest parameter: its ``prepare(settings)`` runs in the pytest process and
grows the hugetlb pool it needs (restored at the end of the run).
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.kernel import abi, memory, system


def missing_feature_for(hugetlb: bool, shmem: bool) -> int:
    """The UFFD_FEATURE_* a MISSING registration needs beyond anon memory."""
    if hugetlb:
        return int(abi.Feature.MISSING_HUGETLBFS)
    return int(abi.Feature.MISSING_SHMEM) if shmem else 0


def wp_feature_for(anon: bool) -> int:
    """The UFFD_FEATURE_* a WP registration needs: PAGEFAULT_FLAG_WP, and for shmem/hugetlb
    WP_HUGETLBFS_SHMEM."""
    f = int(abi.Feature.PAGEFAULT_FLAG_WP)
    return f if anon else f | int(abi.Feature.WP_HUGETLBFS_SHMEM)


@dataclass(frozen=True)
class MemType:
    kind: str  # anon | shmem | shmem-private | hugetlb | hugetlb-private
    hpage: int = 0  # hugetlb page size; 0 for base pages

    @property
    def hugetlb(self) -> bool:
        return self.hpage != 0

    @property
    def shared(self) -> bool:
        """The upstream `shared` flag (shmem-private is mapped shared but tested as private)."""
        return self.kind in ("shmem", "hugetlb")

    @property
    def page_size(self) -> int:
        return self.hpage or system.PAGE_SIZE

    @property
    def name(self) -> str:
        if self.hugetlb and self.hpage != system.default_hugetlb_size():
            return f"{self.kind} ({system.size_label(self.hpage)})"
        return self.kind

    def __str__(self) -> str:
        return self.name

    @property
    def pool_pages(self) -> int:
        """hugetlb pages a case of this type may use at most."""
        return 2 if self.hpage >= system.GiB else 16

    @property
    def missing_feature(self) -> int:
        return missing_feature_for(self.hugetlb, self.kind.startswith("shmem"))

    @property
    def wp_feature(self) -> int:
        return wp_feature_for(self.kind == "anon")

    def prepare(self, settings) -> None:
        if self.hugetlb:
            if self.hpage not in system.hugetlb_sizes():
                return  # the case skips with the reason (needs.hugetlb_size)
            settings.hugetlb(self.hpage, self.pool_pages)

    def map(self, npages: int) -> memory.Region:
        size = npages * self.page_size
        if self.kind == "anon":
            return memory.anon(size)
        if self.kind.startswith("shmem"):
            r = memory.memfd(size, shared=True)
            r.kind = self.kind
            return r
        if self.kind == "hugetlb":
            return memory.hugetlb(size, self.hpage, shared=True, via_memfd=True)
        if self.kind == "hugetlb-private":
            return memory.hugetlb(size, self.hpage, shared=False, via_memfd=True)
        raise ValueError(self.kind)


BASE_KINDS = ("anon", "shmem", "shmem-private")
HUGETLB_KINDS = ("hugetlb", "hugetlb-private")


def mem_types(kinds: tuple[str, ...] = BASE_KINDS + HUGETLB_KINDS) -> list[MemType]:
    """Every (kind, size) pair: base kinds once, hugetlb kinds once per hugetlb size."""
    out = []
    for k in kinds:
        if k in HUGETLB_KINDS:
            sizes = system.hugetlb_sizes() or (2 * system.MiB,)
            out.extend(MemType(k, s) for s in sorted(sizes, key=lambda s: (s != system.default_hugetlb_size(), s)))
        else:
            out.append(MemType(k))
    return out
