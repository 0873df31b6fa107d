"""Memory regions of every backing the suite tests.

A :class:`Region` is created inside the case's (forked) process, never in the pytest parent.
Backings: private/shared anon, memfd (shmem), hugetlb of a given size (MAP_HUGETLB
private or an MFD_HUGETLB memfd), and THP-aligned anon areas of any THP size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lib.kernel import abi, libc

PAGE_SIZE = libc.PAGE_SIZE
PROT_RW = abi.PROT_READ | abi.PROT_WRITE


@dataclass
class Region:
    """A mapping: ``addr``/``size`` in bytes, ``page_size`` the unit faults are resolved in."""

    addr: int
    size: int
    page_size: int = PAGE_SIZE
    kind: str = "anon"
    fd: int = -1
    shared: bool = False
    hugetlb: bool = False
    # raw mapping to unmap on close (may be larger than [addr, addr+size) for alignment)
    _maps: list[tuple[int, int]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def npages(self) -> int:
        return self.size // self.page_size

    def page(self, i: int) -> int:
        return self.addr + i * self.page_size

    def alias(self, prot: int = PROT_RW) -> Region:
        """A second MAP_SHARED mapping of the same file range (shmem/hugetlb memfd only)."""
        if self.fd < 0:
            raise ValueError(f"{self.kind} has no file to alias")
        addr = libc.mmap(self.size, prot, abi.MAP_SHARED, self.fd, 0)
        return Region(addr, self.size, self.page_size, self.kind + "-alias", -1, True, self.hugetlb,
                      [(addr, self.size)])

    def close(self) -> None:
        for a, n in self._maps:
            try:
                libc.munmap(a, n)
            except OSError:
                pass
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def anon(size: int, shared: bool = False, prot: int = PROT_RW, extra_flags: int = 0) -> Region:
    flags = (abi.MAP_SHARED if shared else abi.MAP_PRIVATE) | abi.MAP_ANONYMOUS | extra_flags
    addr = libc.mmap(size, prot, flags)
    return Region(addr, size, PAGE_SIZE, "shared-anon" if shared else "anon", shared=shared, _maps=[(addr, size)])


def memfd(size: int, shared: bool = True, name: str = "kmm", flags: int = abi.MFD_CLOEXEC) -> Region:
    """shmem through a memfd, MAP_SHARED (or MAP_PRIVATE: a private file mapping)."""
    fd = libc.memfd_create(name, flags)
    os.ftruncate(fd, size)
    addr = libc.mmap(size, PROT_RW, abi.MAP_SHARED if shared else abi.MAP_PRIVATE, fd, 0)
    return Region(addr, size, PAGE_SIZE, "memfd" if shared else "memfd-private", fd, shared, _maps=[(addr, size)])


def hugetlb(size: int, hpage: int, shared: bool = False, via_memfd: bool | None = None) -> Region:
    """hugetlb memory of page size ``hpage``.

    Private without memfd is MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB (cow.c, e2b); with a memfd
    (MFD_HUGETLB) it is a hugetlbfs file mapped shared or private (uffd-unit-tests).
    """
    if via_memfd is None:
        via_memfd = shared
    if via_memfd:
        fd = libc.memfd_create("kmm-hugetlb", abi.MFD_CLOEXEC | abi.MFD_HUGETLB | abi.huge_size_flag(hpage))
        os.ftruncate(fd, size)
        addr = libc.mmap(size, PROT_RW, abi.MAP_SHARED if shared else abi.MAP_PRIVATE, fd, 0)
        kind = "hugetlb" if shared else "hugetlb-private"
        return Region(addr, size, hpage, kind, fd, shared, True, [(addr, size)])
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.huge_size_flag(hpage)
    addr = libc.mmap(size, PROT_RW, flags)
    return Region(addr, size, hpage, "hugetlb-private", -1, False, True, [(addr, size)])


def aligned_mmap(size: int, align: int, prot: int = PROT_RW,
                 flags: int = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS) -> int:
    """An anonymous mapping of ``size`` bytes whose start is aligned to ``align`` (a power of
    two): map ``size + align``, then unmap the unaligned head and the tail."""
    raw = libc.mmap(size + align, prot, flags)
    start = (raw + align - 1) & ~(align - 1)
    if start > raw:
        libc.munmap(raw, start - raw)
    tail = raw + size + align - (start + size)
    if tail:
        libc.munmap(start + size, tail)
    return start


def aligned_anon(size: int, align: int, shared: bool = False) -> Region:
    """Anonymous memory whose start is aligned to ``align`` (over-map, then trim)."""
    start = aligned_mmap(size, align, PROT_RW, (abi.MAP_SHARED if shared else abi.MAP_PRIVATE) | abi.MAP_ANONYMOUS)
    return Region(start, size, PAGE_SIZE, "anon", shared=shared, _maps=[(start, size)])


def thp(size: int, thp_size: int, advise: bool = True) -> Region:
    """Anonymous memory aligned to ``thp_size`` with MADV_HUGEPAGE, ready to fault a THP."""
    r = aligned_anon(size, thp_size)
    if advise:
        libc.madvise(r.addr, r.size, abi.Madv.HUGEPAGE)
    r.kind = f"thp-{thp_size // 1024}kB"
    return r
