"""hugetlb-madvise.c: MADV_DONTNEED and MADV_REMOVE on hugetlb mappings, judged by the pool.

Each case follows one block of upstream's main() and checks free_hugepages after every step
(validate_free_pages), counted from the case's start:

* MADV_DONTNEED fails for a range reaching before or after the mapping;
* MADV_DONTNEED fails for a start not aligned to the huge page size, and aligns the length
  down (all but the last page freed);
* MADV_DONTNEED on a private anonymous mapping frees every page;
* on a private mapping of a hugetlbfs file: reads consume nothing, MADV_DONTNEED frees only the
  private copies writes made, and a FALLOC_FL_PUNCH_HOLE of the file frees the private copies
  too ("not the 'correct' behavior, but ... how it has worked since the initial hugetlb
  implementation");
* on a shared mapping: MADV_DONTNEED frees nothing, MADV_REMOVE (a hole punch) frees all;
* shared and private mappings of one file: MADV_REMOVE through the shared one frees the file's
  pages and the private copies.

Then the pool must be as before the case (cases.hugetlb.oracles.pool_restored).  NR_HUGE_PAGES
is upstream's 10 at the default 2 MiB size, 1 for 1 GiB pages (each case needs 2 x NR free; the
alignment case maps at least 2 pages, so that all but the last is some page).
Reference: tools/testing/selftests/mm/hugetlb-madvise.c; Documentation/admin-guide/mm/hugetlbpage.rst.
"""

from __future__ import annotations

import os

import pytest

from cases.hugetlb import oracles
from lib import check
from lib.kernel import abi, libc, memtypes, system
from lib.kernel.memtypes import MemType

PAGE = libc.PAGE_SIZE


def nr_huge_pages(size: int) -> int:
    return 1 if size >= system.GiB else 10


SIZES = [MemType(memtypes.HUGETLB_ANON, s, pages=2 * nr_huge_pages(s)) for s in memtypes.hugetlb_sizes_default_first()]


class Ctx:
    def __init__(self, mem: MemType) -> None:
        mem.require(pages=mem.max_pages)
        self.hp = mem.size
        self.n = nr_huge_pages(mem.size)
        self.before = oracles.counters(mem.size)
        self.free0 = self.before.free
        self.maps: list[tuple[int, int]] = []
        self.fd = -1

    def free_is(self, expected: int, step: str) -> None:
        oracles.free_is(self.hp, expected, step)

    def mmap_anon(self, pages: int) -> int:
        flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.huge_size_flag(self.hp)
        a = libc.mmap(pages * self.hp, abi.PROT_READ | abi.PROT_WRITE, flags)
        self.maps.append((a, pages * self.hp))
        return a

    def memfd(self) -> int:
        self.fd = libc.memfd_create("hugetlb-madvise", abi.MFD_CLOEXEC | abi.MFD_HUGETLB | abi.huge_size_flag(self.hp))
        return self.fd

    def fallocated_file(self) -> int:
        """A hugetlb memfd with ``n`` pages fallocated (checked: n pages consumed)."""
        fd = self.memfd()
        libc.fallocate(fd, 0, 0, self.n * self.hp)
        self.free_is(self.free0 - self.n, "fallocate")
        return fd

    def advise(self, addr: int, advice: int, expected: int, step: str) -> None:
        """madvise the ``n`` pages at ``addr``, then check free_hugepages."""
        libc.madvise(addr, self.n * self.hp, advice)
        self.free_is(expected, step)

    def mmap_file(self, shared: bool) -> int:
        a = libc.mmap(self.n * self.hp, abi.PROT_READ | abi.PROT_WRITE,
                      abi.MAP_SHARED if shared else abi.MAP_PRIVATE, self.fd, 0)
        self.maps.append((a, self.n * self.hp))
        return a

    def unmap(self, addr: int) -> None:
        for i, (a, n) in enumerate(self.maps):
            if a == addr:
                libc.munmap(a, n)
                del self.maps[i]
                return

    def write_fault(self, addr: int, expected: int, step: str) -> None:
        """Write the ``n`` pages at ``addr``, then check free_hugepages."""
        for i in range(self.n):
            libc.write(addr + i * self.hp, i.to_bytes(8, "little"))
        self.free_is(expected, step)

    def read_fault(self, addr: int, expected: int, step: str) -> None:
        """Read the ``n`` pages at ``addr``, then check free_hugepages."""
        for i in range(self.n):
            libc.touch_read(addr + i * self.hp)
        self.free_is(expected, step)

    def close(self) -> None:
        for a, n in self.maps:
            libc.munmap(a, n)
        self.maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        oracles.pool_restored(self.before, oracles.counters(self.hp), "after unmapping everything")


def _madvise_fails(addr: int, length: int, advice: int, what: str) -> None:
    try:
        libc.madvise(addr, length, advice)
    except OSError as e:
        check.diag(f"{what}: {check.errname(e.errno)}")
        return
    raise AssertionError(f"Unexpected success of madvise call with {what}")


def cases(name: str):
    return pytest.mark.parametrize("mem", SIZES, ids=[f"{name} ({system.size_label(m.size)})" for m in SIZES])


@cases("hugetlb-madvise: MADV_DONTNEED outside the mapping fails")
def test_dontneed_invalid_range(mem: MemType) -> None:
    c = Ctx(mem)
    n, hp = c.n, c.hp
    # upstream maps n + 2 pages and unmaps the first and the last; here the n pages are placed
    # in a reserved address range whose rest is then unmapped (no reservation beyond n pages)
    raw = libc.mmap((n + 3) * hp, abi.PROT_NONE)
    addr = ((raw + hp - 1) & ~(hp - 1)) + hp
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.MAP_FIXED | abi.huge_size_flag(hp)
    check.eq(libc.mmap(n * hp, abi.PROT_READ | abi.PROT_WRITE, flags, addr=addr), addr, "mmap at the hole's middle")
    c.maps.append((addr, n * hp))
    libc.munmap(raw, addr - raw)
    libc.munmap(addr + n * hp, raw + (n + 3) * hp - (addr + n * hp))
    c.write_fault(addr, c.free0 - n, "write faults")
    _madvise_fails(addr - PAGE, n * hp, abi.Madv.DONTNEED, "invalid addr")
    _madvise_fails(addr, n * hp + PAGE, abi.Madv.DONTNEED, "invalid length")
    c.close()


@cases("hugetlb-madvise: MADV_DONTNEED alignment of address and length")
def test_dontneed_alignment(mem: MemType) -> None:
    c = Ctx(mem)
    c.n = n = max(c.n, 2)
    hp = c.hp
    addr = c.mmap_anon(n)
    c.write_fault(addr, c.free0 - n, "write faults")
    _madvise_fails(addr + PAGE, n * hp - PAGE, abi.Madv.DONTNEED, "unaligned start address")
    libc.madvise(addr, (n - 1) * hp + PAGE, abi.Madv.DONTNEED)
    c.free_is(c.free0 - 1, "MADV_DONTNEED of all but the last page plus a base page (length aligned down)")
    c.unmap(addr)
    c.free_is(c.free0, "munmap")
    c.close()


@cases("hugetlb-madvise: MADV_DONTNEED on anonymous private mapping")
def test_dontneed_anon_private(mem: MemType) -> None:
    c = Ctx(mem)
    n = c.n
    addr = c.mmap_anon(n)
    c.write_fault(addr, c.free0 - n, "write faults")
    c.advise(addr, abi.Madv.DONTNEED, c.free0, "MADV_DONTNEED of the whole mapping")
    c.close()


@cases("hugetlb-madvise: MADV_DONTNEED on private mapping of hugetlb file")
def test_dontneed_file_private(mem: MemType) -> None:
    c = Ctx(mem)
    n, hp = c.n, c.hp
    fd = c.fallocated_file()
    addr = c.mmap_file(shared=False)
    c.read_fault(addr, c.free0 - n, "read faults (no page consumed)")
    c.advise(addr, abi.Madv.DONTNEED, c.free0 - n, "MADV_DONTNEED (no page freed)")
    c.write_fault(addr, c.free0 - 2 * n, "write faults (private pages allocated)")
    c.advise(addr, abi.Madv.DONTNEED, c.free0 - n, "MADV_DONTNEED (private pages freed)")
    c.write_fault(addr, c.free0 - 2 * n, "write faults again")
    libc.fallocate(fd, abi.FALLOC_FL_PUNCH_HOLE | abi.FALLOC_FL_KEEP_SIZE, 0, n * hp)
    c.free_is(c.free0, "FALLOC_FL_PUNCH_HOLE (file and private pages freed)")
    c.close()


@cases("hugetlb-madvise: MADV_DONTNEED and MADV_REMOVE on shared mapping of hugetlb file")
def test_dontneed_remove_file_shared(mem: MemType) -> None:
    c = Ctx(mem)
    n = c.n
    c.fallocated_file()
    addr = c.mmap_file(shared=True)
    c.write_fault(addr, c.free0 - n, "write faults (no page consumed)")
    c.advise(addr, abi.Madv.DONTNEED, c.free0 - n, "MADV_DONTNEED (no page freed)")
    c.advise(addr, abi.Madv.REMOVE, c.free0, "MADV_REMOVE (all pages freed)")
    c.close()


@cases("hugetlb-madvise: MADV_REMOVE on shared and private mapping of hugetlb file")
def test_remove_file_shared_and_private(mem: MemType) -> None:
    c = Ctx(mem)
    n = c.n
    c.fallocated_file()
    addr = c.mmap_file(shared=True)
    c.write_fault(addr, c.free0 - n, "shared write faults (no page consumed)")
    addr2 = c.mmap_file(shared=False)
    c.read_fault(addr2, c.free0 - n, "private read faults (no page consumed)")
    c.write_fault(addr2, c.free0 - 2 * n, "private write faults (pages allocated)")
    c.advise(addr, abi.Madv.DONTNEED, c.free0 - 2 * n, "MADV_DONTNEED of the shared mapping (no page freed)")
    c.advise(addr2, abi.Madv.DONTNEED, c.free0 - n, "MADV_DONTNEED of the private mapping (private pages freed)")
    c.write_fault(addr2, c.free0 - 2 * n, "private write faults again")
    c.advise(addr, abi.Madv.REMOVE, c.free0, "MADV_REMOVE of the shared mapping (file and private pages freed)")
    c.close()
