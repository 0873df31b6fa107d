"""mkdirty.c: code that may set a PTE/PMD dirty in a read-only VMA must not set it writable.

Each case places or remaps a page in a VMA without PROT_WRITE through a path that may mark
the entry dirty (a FOLL_FORCE write through /proc/self/mem, page migration by mbind(), the PMD
of a THP split into PTEs by mprotect() of one subpage, UFFDIO_COPY), then writes the page in
user mode: the write must die of SIGSEGV and leave the page unchanged ("SIGSEGV generated,
page not modified").  The write runs in a task sharing the mm (lib.kernel.access), never in
a fork()ed child, whose copy-on-write page tables would hide a writable entry.
Reference: tools/testing/selftests/mm/mkdirty.c (case names: its [INFO] lines); the THP is
the PMD size, as upstream's read_pmd_pagesize().
"""

from __future__ import annotations

import os

import pytest

from cases.thp_split import oracles
from lib import check
from lib.kernel import abi, libc, memtypes, needs, system, uffd
from lib.kernel.memory import Region
from lib.kernel.memtypes import MemType
from lib.kernel.pagemap import Pagemap

PAGE = libc.PAGE_SIZE
PMD_THP = [MemType(memtypes.ANON_THP, system.pmd_size())] if system.pmd_size() else []


def _thp_case(name: str):
    return pytest.mark.parametrize("mem", PMD_THP, ids=[f"{name} ({system.size_label(m.size)})" for m in PMD_THP])


def _mem_write(addr: int, data: bytes) -> None:
    """A ptrace-style (FOLL_FORCE) write: pwrite() to /proc/self/mem."""
    fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        n = os.pwrite(fd, data, addr)
    finally:
        os.close(fd)
    check.eq(n, len(data), "write() to /proc/self/mem")
    check.eq(libc.read(addr, len(data)), data, "memory after the /proc/self/mem write")


def _thp_populated(addr: int, thp: int) -> None:
    """mkdirty.c: "MM populated a THP if we got the last subpage populated as well"."""
    with Pagemap() as pm:
        if not pm.entry(addr + thp - PAGE).populated:
            pytest.skip("Did not get a THP populated")


def _readonly_thp(mem: MemType) -> Region:
    """A THP whose first subpage was written, then mprotect()ed read-only (mkdirty.c's
    mmap_thp_range + memset + mprotect); checked to be PMD-mapped."""
    mem.require()
    r = mem.map(mem.size // PAGE)
    libc.fill(r.addr, 1, PAGE)
    libc.mprotect(r.addr, mem.size, abi.PROT_READ)
    _thp_populated(r.addr, mem.size)
    return r


def _mbind_local(addr: int, length: int) -> None:
    """Page migration by mbind(MPOL_LOCAL, MPOL_MF_MOVE); mkdirty.c skips when mbind() fails.
    Pages already on the local node stay where they are (one NUMA node: no migration at
    all): the diagnostic says whether the page moved."""
    with Pagemap() as pm:
        before = pm.entry(addr).pfn
    try:
        libc.syscall(abi.NR.mbind, addr, length, abi.MPOL_LOCAL, 0, 0x7FF, abi.MPOL_MF_MOVE)
    except OSError as e:
        pytest.skip(f"mbind() failed: {os.strerror(e.errno or 0)}")
    with Pagemap() as pm:
        after = pm.entry(addr).pfn
    if before and after:
        check.diag(f"page {'migrated' if before != after else 'not migrated'} by mbind() "
                   f"(PFN {before:#x} -> {after:#x})")


@pytest.mark.tap("PTRACE write access")
def test_ptrace_write() -> None:
    m = libc.mmap(PAGE, abi.PROT_READ)
    check.eq(libc.read(m, 1), b"\0", "first read of the page (the shared zeropage)")
    check.note("unshare the page in the read-only VMA by a FOLL_FORCE write")
    _mem_write(m, b"\x01")
    oracles.write_sigsegv(m)


@_thp_case("PTRACE write access to THP")
def test_ptrace_write_thp(mem: MemType) -> None:
    mem.require()
    r = mem.map(mem.size // PAGE)
    libc.mprotect(r.addr, r.size, abi.PROT_READ)
    _mem_write(r.addr, b"\x01")
    _thp_populated(r.addr, mem.size)
    oracles.write_sigsegv(r.addr)


@pytest.mark.tap("Page migration")
def test_page_migration() -> None:
    m = libc.mmap(PAGE)
    libc.fill(m, 1, PAGE)
    libc.mprotect(m, PAGE, abi.PROT_READ)
    _mbind_local(m, PAGE)
    oracles.write_sigsegv(m)


@_thp_case("Page migration of THP")
def test_page_migration_thp(mem: MemType) -> None:
    r = _readonly_thp(mem)
    _mbind_local(r.addr, mem.size)
    oracles.write_sigsegv(r.addr)


@_thp_case("PTE-mapping a THP")
def test_pte_mapped_thp(mem: MemType) -> None:
    r = _readonly_thp(mem)
    check.note("PTE-map the THP: mprotect() the last subpage read-write")
    libc.mprotect(r.addr + mem.size - PAGE, PAGE, abi.PROT_READ | abi.PROT_WRITE)
    oracles.write_sigsegv(r.addr)


@pytest.mark.tap("UFFDIO_COPY")
def test_uffdio_copy() -> None:
    needs.uffd_features(0)
    src = libc.mmap(PAGE)
    libc.fill(src, 1, PAGE)
    dst = libc.mmap(PAGE, abi.PROT_READ)
    u = uffd.open_for(0)
    try:
        u.register(dst, PAGE, abi.RegisterMode.MISSING)
        check.note("place a page in the read-only VMA with UFFDIO_COPY")
        try:
            u.copy(dst, src, PAGE)
        except OSError as e:
            raise AssertionError(f"UFFDIO_COPY failed: {check.errname(e.errno)}") from None
        check.true(libc.is_uniform(dst, 1, PAGE), "the page UFFDIO_COPY placed holds the source bytes")
        oracles.write_sigsegv(dst)
    finally:
        u.close()

