"""The backings of cow.c as data: anonymous run variants and non-anonymous backings.

Reference: tools/testing/selftests/mm/cow.c (run_with_* and do_run_with_thp).  Each backing
is a pytest parameter:

* ``prepare(settings)`` runs in the pytest process before the case: it enables exactly the
  THP size under test (cow.c pushes "PMD order never, this order always"), grows the hugetlb
  pool to two pages of the size under test (cow.c's hugetlb_setup(2, ...)); what it changes
  comes back after the case (THP) or at the end of the run (pools).
* ``setup()`` runs in the case's process: it maps and populates the memory exactly as cow.c
  does and yields it, or skips with cow.c's reason ("Did not get a THP populated",
  "MADV_PAGEOUT did not work, is swap enabled?", "need more free huge pages").

Anonymous variants fill the memory with 0x01; the test then compares against that content.

The case names keep cow.c's words.  Where cow.c's initial mapping is a memory type of the
suite's vocabulary (lib.kernel.memtypes), the backing creates it through ``MemType(...).map()``
and then applies cow.c's own steps to it; the rest map their memory here, and the table says
why:

=====================================  ==============================================
cow.c backing                          memory type (lib.kernel.memtypes)
=====================================  ==============================================
base page (swapped out or not)         ``anon`` (one page, MADV_NOHUGEPAGE, then
                                       paged out for the swapped variant)
THP (N kB), every variant              ``anon-thp (N kB)``, then PTE-mapped, cut to a
                                       single PTE, half mremap()'ed, half shared or
                                       swapped out as the name says
hugetlb (N kB)                         ``hugetlb-anon``: MAP_PRIVATE|MAP_ANONYMOUS|
                                       MAP_HUGETLB (memtypes' ``hugetlb`` is a memfd)
memfd                                  ``shmem-map-private`` (the page fallocate()'d),
                                       plus a MAP_SHARED R/O view (Region.alias)
memfd hugetlb (N kB)                   ``hugetlb-private`` (the page fallocate()'d),
                                       plus a MAP_SHARED R/O view (Region.alias)
shared zeropage                        none, own code: not a mapping type but the page
                                       a read fault maps into private anon memory (a
                                       R/W and a R/O mapping, both read-faulted)
huge zeropage                          none, own code: the PMD page a read fault maps
                                       into THP-aligned MADV_HUGEPAGE anon memory (two
                                       mappings, R/W and R/O, both read-faulted)
tmpfile                                none, own code: a private mapping of an unlinked
                                       file in the temporary directory (a disk file
                                       system, no memfd), plus a MAP_SHARED R/O view
=====================================  ==============================================
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lib.kernel import abi, hugetlb_pool, libc, memory, memtypes, needs, system, tasks
from lib.kernel.memtypes import MemType
from lib.kernel.pagemap import Pagemap

PAGE = system.PAGE_SIZE
PROT_RW = abi.PROT_READ | abi.PROT_WRITE
FILL = 0x01
HUGETLB_PAGES = 2  # cow.c: hugetlb_setup(2, ...): COW of a hugetlb page needs a second one

# the swap device of this run, set by the area's session fixture (inherited by case processes)
SWAP_STATE = {"note": ""}


@dataclass
class Mem:
    """What a test function receives: cow.c's (mem, size, is_hugetlb)."""

    addr: int
    size: int
    hugetlb: bool = False


def grow_hugetlb_pool(settings, size: int) -> None:
    """Two free hugetlb pages of ``size`` for the rest of the run (cow.c hugetlb_setup(2)),
    grown by lib.kernel.memtypes.grow_pool (one compaction retry for gigantic pages; a size
    that still fails is not tried again in this run)."""
    if size not in system.hugetlb_sizes():
        pytest.skip(f"hugetlb size {system.size_label(size)} not offered by this kernel")
    memtypes.grow_pool(settings, size, HUGETLB_PAGES)


def _swap_skip(what: str) -> None:
    why = "MADV_PAGEOUT did not work, is swap enabled?"
    if not system.swap_active():
        why += " (no swap active" + (f": {SWAP_STATE['note']}" if SWAP_STATE["note"] else "") + ")"
    else:
        why += f" ({what} not swapped out)"
    pytest.skip(why)


def _range_swapped(addr: int, size: int) -> bool:
    with Pagemap() as pm:
        return all(e.swapped for e in pm.entries(addr, size // PAGE))


def _page_out(addr: int, size: int, what: str) -> None:
    try:
        libc.madvise(addr, size, abi.Madv.PAGEOUT)
    except OSError:
        pass  # cow.c ignores the result and checks pagemap
    if not _range_swapped(addr, size):
        _swap_skip(what)


# ---------------------------------------------------------------------------------------
# anonymous memory (cow.c run_with_base_page ... run_with_hugetlb)

ANON_RUNS = ("base", "base_swap", "pmd", "pmd_swap", "pte", "pte_swap", "single", "single_swap", "mremap",
             "shared", "hugetlb")

_SUFFIX = {
    "base": "with base page",
    "base_swap": "with swapped out base page",
    "pmd": "with THP ({})",
    "pmd_swap": "with swapped-out THP ({})",
    "pte": "with PTE-mapped THP ({})",
    "pte_swap": "with swapped-out, PTE-mapped THP ({})",
    "single": "with single PTE of THP ({})",
    "single_swap": "with single PTE of swapped-out THP ({})",
    "mremap": "with partially mremap()'ed THP ({})",
    "shared": "with partially shared THP ({})",
    "hugetlb": "with hugetlb ({})",
}


@dataclass(frozen=True)
class AnonBacking:
    run: str  # one of ANON_RUNS
    size: int = 0  # THP or hugetlb page size; 0 for base pages

    @property
    def suffix(self) -> str:
        return _SUFFIX[self.run].format(system.size_label(self.size))

    @property
    def swap(self) -> bool:
        return self.run.endswith("_swap")

    @property
    def hugetlb(self) -> bool:
        return self.run == "hugetlb"

    @property
    def thp(self) -> bool:
        return not self.hugetlb and not self.run.startswith("base")

    def __str__(self) -> str:
        return self.suffix

    @property
    def memtype(self) -> MemType:
        """The memory type cow.c's initial mapping is (lib.kernel.memtypes)."""
        if self.hugetlb:
            return MemType(memtypes.HUGETLB_ANON, self.size, pages=HUGETLB_PAGES)
        if self.thp:
            return MemType(memtypes.ANON_THP, self.size)
        return MemType(memtypes.ANON)

    def prepare(self, settings) -> None:
        if self.thp:
            settings.thp_only_size(self.size)
        elif self.hugetlb:
            grow_hugetlb_pool(settings, self.size)

    @contextlib.contextmanager
    def setup(self) -> Iterator[Mem]:
        maps: list[tuple[int, int]] = []
        regions: list[memory.Region] = []
        try:
            if self.run.startswith("base"):
                yield self._base(maps, regions)
            elif self.hugetlb:
                yield self._hugetlb(maps, regions)
            else:
                yield self._thp(maps, regions)
        finally:
            for a, n in maps:
                with contextlib.suppress(OSError):
                    libc.munmap(a, n)
            for r in regions:
                r.close()

    def _base(self, maps: list, regions: list) -> Mem:
        r = self.memtype.map(1)
        regions.append(r)
        mem = r.addr
        try:
            libc.madvise(mem, PAGE, abi.Madv.NOHUGEPAGE)
        except OSError as e:
            if e.errno != errno.EINVAL:  # not around on a kernel: ignored like cow.c
                raise
        libc.fill(mem, FILL, PAGE)
        if self.swap:
            _page_out(mem, PAGE, "the base page")
        return Mem(mem, PAGE)

    def _thp(self, maps: list, regions: list) -> Mem:
        thpsize = self.size
        mt = self.memtype
        mt.require()  # a probe: the THP size is offered
        r = mt.map(thpsize // PAGE)  # aligned to thpsize, MADV_HUGEPAGE (cow.c's mmap + madvise)
        regions.append(r)
        mem = r.addr
        # touch the first subpage; a THP of this size populates the last one too
        libc.touch_write(mem, FILL)
        with Pagemap() as pm:
            if not pm.entry(mem + thpsize - PAGE).populated:
                pytest.skip("Did not get a THP populated")
        libc.fill(mem, FILL, thpsize)
        size = thpsize
        run = self.run.removesuffix("_swap")
        if run == "pte":
            # PTE-map the THP: map one subpage R/O for a moment (a no-op for mTHP)
            libc.mprotect(mem + PAGE, PAGE, abi.PROT_READ)
            libc.mprotect(mem + PAGE, PAGE, PROT_RW)
        elif run == "single":
            # all but one subpage discarded: a single PTE maps a single subpage
            libc.madvise(mem + PAGE, thpsize - PAGE, abi.Madv.DONTNEED)
            size = PAGE
        elif run == "mremap":
            half = thpsize // 2
            dst = libc.mmap(half, abi.PROT_NONE)
            maps.append((dst, half))
            got = libc.mremap(mem + half, half, half, abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, dst)
            if got != dst:
                raise AssertionError(f"mremap() moved to {got:#x}, not {dst:#x}")
            size = half
        elif run == "shared":
            # share the first page with a child that quits: the rest was never shared
            libc.madvise(mem + PAGE, thpsize - PAGE, abi.Madv.DONTFORK)
            tasks.reap(tasks.fork_call(lambda: None))
            libc.madvise(mem + PAGE, thpsize - PAGE, abi.Madv.DOFORK)
        if self.swap:
            _page_out(mem, size, "the THP" if size == thpsize else "the subpage")
        return Mem(mem, size)

    def _hugetlb(self, maps: list, regions: list) -> Mem:
        mt = self.memtype
        hugetlb_pool.require_before_map(self.size, HUGETLB_PAGES)  # the pool probe (cow.c: two pages)
        r = mt.map(1)  # with the pages there, a refused mapping is a failure (memtypes)
        regions.append(r)
        mem = r.addr
        libc.fill(mem, FILL, self.size)
        # COW/unsharing needs a second hugetlb page, otherwise SIGBUS (cow.c maps a dummy one)
        mt.map(1).close()
        hugetlb_pool.require_spare_before_fork(self.size)  # the case's fork()/copy-on-write comes next
        return Mem(mem, self.size, hugetlb=True)


def anon_backings(thp_sizes: tuple[int, ...] | None = None, hugetlb_sizes: tuple[int, ...] | None = None,
                  pmd_size: int | None = None) -> list[AnonBacking]:
    """cow.c's order: base, base swapped, per THP size ([PMD, PMD swapped], PTE, PTE swapped,
    single PTE, single PTE swapped, mremap, shared), then each hugetlb size."""
    thp_sizes = system.thp_sizes() if thp_sizes is None else thp_sizes
    hugetlb_sizes = system.hugetlb_sizes() if hugetlb_sizes is None else hugetlb_sizes
    pmd = system.pmd_size() if pmd_size is None else pmd_size
    out = [AnonBacking("base"), AnonBacking("base_swap")]
    for s in sorted(thp_sizes):
        if s == pmd:
            out += [AnonBacking("pmd", s), AnonBacking("pmd_swap", s)]
        out += [AnonBacking(r, s) for r in ("pte", "pte_swap", "single", "single_swap", "mremap", "shared")]
    out += [AnonBacking("hugetlb", s) for s in sorted(hugetlb_sizes)]
    return out


# ---------------------------------------------------------------------------------------
# non-anonymous memory (cow.c run_with_zeropage ... run_with_memfd_hugetlb)


@dataclass
class NonAnonMem:
    """cow.c's (mem, smem, size): a private writable mapping and a R/O view of the same backing."""

    addr: int
    saddr: int
    size: int


_NA_SUFFIX = {
    "zeropage": "with shared zeropage",
    "memfd": "with memfd",
    "tmpfile": "with tmpfile",
    "huge_zeropage": "with huge zeropage",
    "memfd_hugetlb": "with memfd hugetlb ({})",
}


def _populate(addrs: tuple[int, ...]) -> None:
    """Read one byte of each mapping; each must then be populated (cow.c populate_page_checked)."""
    with Pagemap() as pm:
        for a in addrs:
            libc.touch_read(a)
            if not pm.entry(a).populated:
                raise AssertionError(f"Failed to populate page at {a:#x}")


@dataclass(frozen=True)
class NonAnonBacking:
    kind: str
    size: int = 0  # hugetlb page size for memfd_hugetlb

    @property
    def suffix(self) -> str:
        return _NA_SUFFIX[self.kind].format(system.size_label(self.size))

    def __str__(self) -> str:
        return self.suffix

    @property
    def memtype(self) -> MemType | None:
        """The memory type of cow.c's private mapping (lib.kernel.memtypes); None where it is
        none (the zeropages, tmpfile: see the table above)."""
        if self.kind == "memfd":
            return MemType(memtypes.SHMEM_MAP_PRIVATE)
        if self.kind == "memfd_hugetlb":
            return MemType(memtypes.HUGETLB_PRIVATE, self.size, pages=HUGETLB_PAGES)
        return None

    def prepare(self, settings) -> None:
        if self.kind == "huge_zeropage" and system.pmd_size():
            settings.thp_only_size(system.pmd_size())
        elif self.kind == "memfd_hugetlb":
            grow_hugetlb_pool(settings, self.size)

    @contextlib.contextmanager
    def setup(self) -> Iterator[NonAnonMem]:
        maps: list[tuple[int, int]] = []
        fds: list[int] = []
        regions: list[memory.Region] = []
        try:
            if self.memtype is not None:
                yield getattr(self, f"_{self.kind}")(regions)
            else:
                yield getattr(self, f"_{self.kind}")(maps, fds)
        finally:
            for r in reversed(regions):  # the views first, the file's owner (its fd) last
                r.close()
            for a, n in maps:
                with contextlib.suppress(OSError):
                    libc.munmap(a, n)
            for fd in fds:
                os.close(fd)

    def _zeropage(self, maps: list, fds: list) -> NonAnonMem:
        mem = libc.mmap(PAGE)
        maps.append((mem, PAGE))
        smem = libc.mmap(PAGE, abi.PROT_READ)
        maps.append((smem, PAGE))
        _populate((mem, smem))  # read faults map the shared zeropage
        return NonAnonMem(mem, smem, PAGE)

    def _huge_zeropage(self, maps: list, fds: list) -> NonAnonMem:
        if system.read_text(f"{system.THP}/use_zero_page", "0") != "1":
            pytest.skip("Huge zeropage not enabled")
        pmd = system.pmd_size()
        addrs = []
        for prot in (PROT_RW, abi.PROT_READ):
            raw = libc.mmap(2 * pmd, prot)
            maps.append((raw, 2 * pmd))
            a = (raw + pmd) & ~(pmd - 1)
            libc.madvise(a, pmd, abi.Madv.HUGEPAGE)
            addrs.append(a)
        _populate(tuple(addrs))
        with Pagemap() as pm:
            if not all(pm.entry(a + PAGE).populated for a in addrs):
                pytest.skip("Did not get THPs populated")
        return NonAnonMem(addrs[0], addrs[1], pmd)

    def _file(self, fd: int, size: int, maps: list) -> NonAnonMem:
        mem = libc.mmap(size, PROT_RW, abi.MAP_PRIVATE, fd, 0)
        maps.append((mem, size))
        smem = libc.mmap(size, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        maps.append((smem, size))
        _populate((mem, smem))
        return NonAnonMem(mem, smem, size)

    def _memtype_file(self, regions: list) -> NonAnonMem:
        """cow.c's memfd backings: the memory type's private mapping of a memfd whose page is
        allocated (fallocate: zeroes), and a MAP_SHARED R/O view of the same file."""
        mt = self.memtype
        assert mt is not None
        r = mt.map(1)
        regions.append(r)
        try:
            libc.fallocate(r.fd, 0, 0, r.size)
        except OSError as e:
            if not mt.hugetlb:
                raise
            pytest.skip(f"need more free huge pages (fallocate: {e.strerror})")
        view = r.alias(abi.PROT_READ)
        regions.append(view)
        _populate((r.addr, view.addr))
        return NonAnonMem(r.addr, view.addr, r.size)

    def _memfd(self, regions: list) -> NonAnonMem:
        return self._memtype_file(regions)

    def _tmpfile(self, maps: list, fds: list) -> NonAnonMem:
        fd, path = tempfile.mkstemp(prefix="kmm-cow-")  # tmpfile(3): an unlinked file in /tmp
        os.unlink(path)
        fds.append(fd)
        try:
            libc.fallocate(fd, 0, 0, PAGE)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                pytest.skip(f"fallocate() not supported on {tempfile.gettempdir()}")
            raise
        return self._file(fd, PAGE, maps)

    def _memfd_hugetlb(self, regions: list) -> NonAnonMem:
        hugetlb_pool.require_before_map(self.size, HUGETLB_PAGES)  # the pool probe (cow.c: two pages)
        needs.memfd_hugetlb(self.size)  # a probe: memfd_create(MFD_HUGETLB) of this size
        m = self._memtype_file(regions)
        # the case's copy-on-write comes next; the private mapping's reservation is its own
        hugetlb_pool.require_spare_before_fork(self.size, own_reserved=1)
        return m


def non_anon_backings(hugetlb_sizes: tuple[int, ...] | None = None, pmd_size: int | None = None) -> list:
    """cow.c's order: zeropage, memfd, tmpfile, huge zeropage (if PMD THP), memfd hugetlb per size."""
    hugetlb_sizes = system.hugetlb_sizes() if hugetlb_sizes is None else hugetlb_sizes
    pmd = system.pmd_size() if pmd_size is None else pmd_size
    out = [NonAnonBacking("zeropage"), NonAnonBacking("memfd"), NonAnonBacking("tmpfile")]
    if pmd:
        out.append(NonAnonBacking("huge_zeropage"))
    out += [NonAnonBacking("memfd_hugetlb", s) for s in sorted(hugetlb_sizes)]
    return out


# ---------------------------------------------------------------------------------------
# content snapshots (cow.c's "old" copies)


@dataclass
class Snapshot:
    """The content of a range at one moment.

    Uniform content (every byte the same: what cow.c's variants write) is kept as that byte
    and compared with one memcmp of the range against itself shifted by one byte, so a 1 GiB
    hugetlb page needs no 1 GiB copy; other content is copied.
    """

    size: int
    byte: int | None
    data: bytes | None = None

    @classmethod
    def take(cls, addr: int, size: int) -> Snapshot:
        first = libc.read(addr, 1)[0]
        if libc.is_uniform(addr, first, size):
            return cls(size, first)
        return cls(size, None, libc.read(addr, size))

    def matches(self, addr: int, size: int | None = None) -> bool:
        """The memory at ``addr`` (first ``size`` bytes) still holds this content."""
        n = self.size if size is None else size
        if self.byte is not None:
            return libc.is_uniform(addr, self.byte, n)
        return libc.compare(addr, self.data[:n])

    def matches_bytes(self, data: bytes) -> bool:
        if self.byte is not None:
            return data == bytes([self.byte]) * len(data)
        return data == self.data[: len(data)]
