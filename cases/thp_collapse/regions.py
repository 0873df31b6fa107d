"""Memory for the THP-collapse cases and the oracles on it: PMD-aligned areas of each memory kind
filled with khugepaged.c's pattern (setup_area, fault, validate), and what the kernel made of
them (smaps PMD counters, folio orders from pagemap + kpageflags, check_huge).

Upstream: tools/testing/selftests/mm/khugepaged.c (setup_area, fault, validate_memory,
check_huge); Documentation/admin-guide/mm/pagemap.rst (/proc/kpageflags COMPOUND_HEAD/TAIL).
Every oracle here is a plain function; tests/test_thp_collapse_oracles.py feeds each of them a
state that must make it fail (negative controls).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass

from cases.thp_collapse.matrix import ANON, FILE, FILES, PAGE_SIZE, PMD_SIZE, SHMEM, SMAPS_FIELD, order_of
from cases.thp_collapse.scratchfs import file_dir
from lib.kernel import abi, libc, memory, system
from lib.kernel.pagemap import Pagemap, folio_order

PROT_RW = abi.PROT_READ | abi.PROT_WRITE


@dataclass
class Area:
    """A PMD-aligned mapping of one memory kind (khugepaged.c setup_area)."""

    addr: int
    size: int
    mem: str
    fd: int = -1

    def page(self, i: int) -> int:
        return self.addr + i * PAGE_SIZE

    def close(self) -> None:
        with contextlib.suppress(OSError):
            libc.munmap(self.addr, self.size)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def reserve(size: int, align: int = 0) -> int:
    """Address space of ``size`` bytes aligned to ``align`` (PMD by default), PROT_NONE."""
    return memory.aligned_mmap(size, align or PMD_SIZE, abi.PROT_NONE,
                               abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_NORESERVE)


def pattern_bytes(first: int, n: int) -> bytes:
    """The khugepaged.c fill pattern: int ``i + 0xdead0000`` at the start of page i."""
    out = bytearray(n * PAGE_SIZE)
    for i in range(n):
        struct.pack_into("<I", out, i * PAGE_SIZE, (first + i + 0xDEAD0000) & 0xFFFFFFFF)
    return bytes(out)


def setup_area(mem: str, size: int) -> Area:
    """khugepaged.c setup_area: anon private, memfd shared, or a regular file filled with the
    pattern then reopened read-only (mapped PROT_READ|PROT_EXEC private) or read-write (shared)."""
    addr = reserve(size)
    if mem == ANON:
        libc.mmap(size, PROT_RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED, addr=addr)
        return Area(addr, size, mem)
    if mem == SHMEM:
        fd = os.memfd_create("kmm-collapse-shmem", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        libc.mmap(size, PROT_RW, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=addr)
        return Area(addr, size, mem, fd)
    fd, path = tempfile.mkstemp(prefix="kmm-collapse-", dir=file_dir())
    try:
        os.write(fd, pattern_bytes(0, size // PAGE_SIZE))
        os.fsync(fd)
        # drop the (clean) page cache the write made, as upstream drops caches: a filesystem with
        # large folios may have cached the data in PMD-sized folios already, and the case must
        # find base pages (the scratch filesystem's device has readahead off, as upstream's)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if mem == FILE:
            os.close(fd)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            libc.mmap(size, abi.PROT_READ | abi.PROT_EXEC, abi.MAP_PRIVATE | abi.MAP_FIXED, fd, 0, addr=addr)
        else:
            libc.mmap(size, PROT_RW, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=addr)
    finally:
        os.unlink(path)
    return Area(addr, size, mem, fd)


def fault(area: Area, start: int, end: int) -> None:
    """khugepaged.c fault: write the pattern into pages [start, end) (anon, shmem); read-fault
    them with MADV_POPULATE_READ (files)."""
    if end <= start:
        return
    if area.mem in FILES:
        libc.madvise(area.addr + start, end - start, abi.Madv.POPULATE_READ)
        return
    for i in range(start // PAGE_SIZE, end // PAGE_SIZE):
        libc.write(area.page(i), struct.pack("<I", (i + 0xDEAD0000) & 0xFFFFFFFF))


def bad_pages(addr: int, start: int, end: int) -> list[tuple[int, int]]:
    """Pages in [start, end) whose first int is not the pattern: [(page index, value)]."""
    if end <= start:
        return []
    data = libc.read(addr + start, end - start)
    out = []
    for k in range((end - start) // PAGE_SIZE):
        i = start // PAGE_SIZE + k
        v = struct.unpack_from("<I", data, k * PAGE_SIZE)[0]
        if v != (i + 0xDEAD0000) & 0xFFFFFFFF:
            out.append((i, v))
    return out


def validate(addr: int, start: int, end: int) -> None:
    """Oracle (khugepaged.c validate_memory): every page keeps its pattern."""
    bad = bad_pages(addr, start, end)
    if bad:
        i, v = bad[0]
        raise AssertionError(f"page {i} is corrupted: {v:#x} (and {len(bad) - 1} more)")


# ---------------------------------------------------------------------------------------
# state: smaps PMD counters, pagemap + kpageflags folio orders


def smaps_sum(addr: int, length: int, field: str, pid: int | str = "self") -> int:
    """Sum of a kB counter over the VMAs overlapping [addr, addr+length) (VMAs may be split)."""
    total = 0
    inside = False
    end = addr + length
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                try:
                    s, e = (int(x, 16) for x in head.split("-"))
                except ValueError:
                    inside = False
                    continue
                inside = s < end and e > addr
                continue
            if inside and line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def pmd_mapped_kb(addr: int, length: int, mem: str) -> int:
    return smaps_sum(addr, length, SMAPS_FIELD[mem])


def folio_orders(addr: int, npages: int) -> list[int | None]:
    """Order of the folio behind each base page (None: not present).  Root only (PFNs)."""
    with Pagemap() as pm:
        entries = pm.entries(addr, npages)
    cache: dict[int, int] = {}
    out: list[int | None] = []
    fd = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for e in entries:
            if not e.present or not e.pfn:
                out.append(None)
                continue
            pfn = e.pfn
            hit = next((o for base, o in cache.items() if base <= pfn < base + (1 << o)), None)
            if hit is None:
                hit = _folio_order(fd, pfn)
                cache[pfn & ~((1 << hit) - 1)] = hit
            out.append(hit)
    finally:
        os.close(fd)
    return out


_BLOCK = 1024  # folios up to order 9 lie inside one 1024-aligned PFN block (natural alignment)


def _folio_order(fd: int, pfn: int) -> int:
    """lib.kernel.pagemap.folio_order with one pread per folio (same COMPOUND_HEAD/TAIL walk) over the
    folio's 1024-aligned PFN block and the page after it (where a folio ending at the block's
    end shows its end); falls back to it for folios larger than the block."""
    base = pfn & ~(_BLOCK - 1)
    raw = os.pread(fd, 8 * (_BLOCK + 1), base * 8)
    flags = struct.unpack(f"<{len(raw) // 8}Q", raw)
    head_bit, tail_bit = int(abi.KPF.COMPOUND_HEAD), int(abi.KPF.COMPOUND_TAIL)
    i = pfn - base
    if not flags[i] & (head_bit | tail_bit):
        return 0
    h = i
    while h >= 0 and not flags[h] & head_bit:
        h -= 1
    if h < 0:
        return folio_order(pfn)
    n = 1
    while h + n < len(flags) and flags[h + n] & tail_bit:
        n += 1
    if h + n >= len(flags):
        return folio_order(pfn)
    return n.bit_length() - 1


def describe(addr: int, length: int, mem: str = ANON) -> str:
    """'AnonHugePages 2048 kB; folio orders {9: 512}' (the diagnostics of a case)."""
    hist = Counter(folio_orders(addr, length // PAGE_SIZE)) if system.is_root() else Counter()
    orders = ", ".join(f"{'none' if k is None else k}: {v}" for k, v in sorted(hist.items(), key=lambda kv: (
        kv[0] is None, kv[0] or 0)))
    return f"{SMAPS_FIELD[mem]} {pmd_mapped_kb(addr, length, mem)} kB; folio orders {{{orders}}}"


def huge_windows(addr: int, nwin: int, size: int, mem: str = ANON) -> int:
    """How many ``size`` windows from ``addr`` are backed by one folio of that size and mapped
    as such: for the PMD size, the smaps PMD counter (khugepaged.c check_huge) confirmed by the
    folio order of each window; for an mTHP size, the folio order (mTHPs are PTE-mapped)."""
    n = size // PAGE_SIZE
    if size == PMD_SIZE:
        mapped = pmd_mapped_kb(addr, nwin * size, mem) // (size // 1024)
        if not system.is_root():
            return mapped
        orders = folio_orders(addr, nwin * n)
        whole = sum(1 for w in range(nwin) if set(orders[w * n:(w + 1) * n]) == {order_of(size)})
        return min(mapped, whole)
    orders = folio_orders(addr, nwin * n)
    return sum(1 for w in range(nwin) if set(orders[w * n:(w + 1) * n]) == {order_of(size)})


def check_huge(area: Area, nwin: int, size: int, what: str) -> None:
    """Oracle: exactly ``nwin`` windows of the area are collapsed (0 = none is)."""
    total = area.size // size
    got = huge_windows(area.addr, total, size, area.mem)
    if got != nwin:
        raise AssertionError(f"{what}: expected {nwin} of {total} {system.size_label(size)} windows huge, got {got} "
                             f"({describe(area.addr, area.size, area.mem)})")


def pte_mapped_thp(addr: int, size: int, mem: str = ANON) -> bool:
    """True when [addr, addr+size) is one THP folio of ``size`` that is mapped by PTEs only."""
    orders = folio_orders(addr, size // PAGE_SIZE)
    return set(orders) == {order_of(size)} and pmd_mapped_kb(addr, size, mem) == 0


def pmd_mapped_thp(addr: int, size: int, mem: str = ANON) -> bool:
    orders = folio_orders(addr, size // PAGE_SIZE)
    return set(orders) == {order_of(size)} and pmd_mapped_kb(addr, size, mem) == size // 1024
