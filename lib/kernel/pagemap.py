"""/proc/<pid>/pagemap, /proc/kpageflags, smaps counters and the PAGEMAP_SCAN ioctl.

Bit meanings: Documentation/admin-guide/mm/pagemap.rst (see lib.kernel.abi).  Reading pagemap walks
page tables without faulting, so it is safe on userfault-registered memory.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from lib.kernel import abi, libc

PAGE_SIZE = libc.PAGE_SIZE


@dataclass(frozen=True)
class Entry:
    """One decoded pagemap entry."""

    raw: int

    @property
    def present(self) -> bool:
        return bool(self.raw & abi.PM_PRESENT)

    @property
    def swapped(self) -> bool:
        return bool(self.raw & abi.PM_SWAP)

    @property
    def populated(self) -> bool:
        return self.present or self.swapped

    @property
    def uffd_wp(self) -> bool:
        return bool(self.raw & abi.PM_UFFD_WP)

    @property
    def exclusive(self) -> bool:
        return bool(self.raw & abi.PM_MMAP_EXCLUSIVE)

    @property
    def soft_dirty(self) -> bool:
        return bool(self.raw & abi.PM_SOFT_DIRTY)

    @property
    def file(self) -> bool:
        return bool(self.raw & abi.PM_FILE)

    @property
    def pfn(self) -> int | None:
        return self.raw & abi.PM_PFN_MASK if self.present else None

    def __str__(self) -> str:
        bits = [n for n, v in (("present", self.present), ("swap", self.swapped), ("wp", self.uffd_wp),
                               ("excl", self.exclusive), ("sd", self.soft_dirty), ("file", self.file)) if v]
        pfn = f" pfn={self.pfn:#x}" if self.present and self.pfn else ""
        return f"<{'|'.join(bits) or 'none'}{pfn}>"


class Pagemap:
    """An open /proc/<pid>/pagemap."""

    def __init__(self, pid: int | str = "self") -> None:
        self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Pagemap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self, addr: int, npages: int, page_size: int = PAGE_SIZE) -> list[Entry]:
        """Entries of ``npages`` base pages from ``addr`` (page_size only picks the stride)."""
        step = page_size // PAGE_SIZE
        raw = os.pread(self.fd, 8 * npages * step, (addr // PAGE_SIZE) * 8)
        vals = struct.unpack(f"<{len(raw) // 8}Q", raw)
        return [Entry(v) for v in vals[::step]]

    def entry(self, addr: int) -> Entry:
        return self.entries(addr, 1)[0]

    # -- PAGEMAP_SCAN (6.7+) --------------------------------------------------------------
    def scan(
        self,
        start: int,
        end: int,
        *,
        flags: int = 0,
        vec_len: int = 64,
        max_pages: int = 0,
        category_inverted: int = 0,
        category_mask: int = 0,
        category_anyof_mask: int = 0,
        return_mask: int = 0,
        vec: int | None = None,
        size: int | None = None,
    ) -> ScanResult:
        """PAGEMAP_SCAN over [start, end); raises OSError naming the ioctl on failure."""
        regions = (abi.page_region * max(vec_len, 1))()
        arg = abi.pm_scan_arg(
            size=ctypes.sizeof(abi.pm_scan_arg) if size is None else size,
            flags=flags,
            start=start,
            end=end,
            vec=ctypes.addressof(regions) if vec is None else vec,
            vec_len=vec_len,
            max_pages=max_pages,
            category_inverted=category_inverted,
            category_mask=category_mask,
            category_anyof_mask=category_anyof_mask,
            return_mask=return_mask,
        )
        n = libc.ioctl(self.fd, abi.PAGEMAP_SCAN, arg, name="PAGEMAP_SCAN")
        out = [(regions[i].start, regions[i].end, regions[i].categories) for i in range(n)] if vec is None else []
        return ScanResult(n, out, arg.walk_end)


@dataclass(frozen=True)
class ScanResult:
    count: int
    regions: list[tuple[int, int, int]]
    walk_end: int

    def pages(self, page_size: int = PAGE_SIZE) -> int:
        return sum((e - s) // page_size for s, e, _ in self.regions)


def pagemap_scan_supported() -> bool:
    """The pagemap_ioctl probe: an invalid vec pointer gives EFAULT when the ioctl exists."""
    with Pagemap() as pm:
        buf = libc.mmap(PAGE_SIZE)
        try:
            pm.scan(buf, buf + PAGE_SIZE, vec=(1 << 64) - 1, vec_len=1, category_anyof_mask=abi.PageIs.PRESENT,
                    return_mask=abi.PageIs.PRESENT)
        except OSError as e:
            return e.errno == 14  # EFAULT
        finally:
            libc.munmap(buf, PAGE_SIZE)
    return False


KPAGEFLAGS = "/proc/kpageflags"


def _kpf(fd: int, pfn: int) -> abi.KPF:
    return abi.KPF(struct.unpack("<Q", os.pread(fd, 8, pfn * 8))[0])


def kpageflags(pfn: int) -> abi.KPF:
    """Flags of one PFN from /proc/kpageflags (root only)."""
    fd = os.open(KPAGEFLAGS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _kpf(fd, pfn)
    finally:
        os.close(fd)


def folio_order(pfn: int) -> int:
    """Order of the (anon THP) folio containing ``pfn``, by the split_huge_page_test technique.

    0 for a small folio.  Needs root for PFNs and kpageflags (opened once for the walk).
    """
    fd = os.open(KPAGEFLAGS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not _kpf(fd, pfn) & (abi.KPF.COMPOUND_HEAD | abi.KPF.COMPOUND_TAIL):
            return 0
        head = pfn
        while not _kpf(fd, head) & abi.KPF.COMPOUND_HEAD:
            head -= 1
        n = 1
        while _kpf(fd, head + n) & abi.KPF.COMPOUND_TAIL:
            n += 1
        return n.bit_length() - 1
    finally:
        os.close(fd)


def smaps_kb(addr: int, field: str, pid: int | str = "self") -> int:
    """A kB counter (AnonHugePages, ShmemPmdMapped, Swap, ...) of the VMA starting at ``addr``."""
    with open(f"/proc/{pid}/smaps") as f:
        inside = False
        for line in f:
            if "-" in line.split(" ", 1)[0] and not line.startswith(field):
                start = line.split("-", 1)[0]
                try:
                    inside = int(start, 16) == addr
                except ValueError:
                    inside = False
                continue
            if inside and line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no VMA at {addr:#x} with {field} in smaps")


def clear_soft_dirty(pid: int | str = "self") -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write(str(abi.CLEAR_REFS_SOFT_DIRTY))
