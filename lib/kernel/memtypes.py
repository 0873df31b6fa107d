"""The memory types the suite speaks of: one name, one mapping, everywhere.

A name in a case id means exactly one mapping, in every area, and follows what the mirrored
upstream program means by it (uffd-unit-tests' mem types first: tools/testing/selftests/mm/
uffd-common.c and uffd-unit-tests.c).  A mapping upstream has no name for gets a name of its own.

==================  ===========================================================  ================
name                mapping                                                      upstream name
==================  ===========================================================  ================
anon                MAP_PRIVATE|MAP_ANONYMOUS, base pages                        uffd-unit-tests
anon-thp (N kB)     MAP_PRIVATE|MAP_ANONYMOUS aligned to N, MADV_HUGEPAGE, only  cow.c "THP (N kB)"
                    the anon THP size N enabled
shared-anon         MAP_SHARED|MAP_ANONYMOUS (a shmem inode of its own)           e2b "shmem"
shmem               memfd_create(), MAP_SHARED                                   uffd-unit-tests
shmem-private       the same mapping as shmem; upstream's test logic treats it   uffd-unit-tests
                    as private (its ``shared`` flag is false)
shmem-map-private   memfd_create(), MAP_PRIVATE (a private file mapping)         (none)
hugetlb             memfd_create(MFD_HUGETLB), MAP_SHARED                        uffd-unit-tests
hugetlb-private     memfd_create(MFD_HUGETLB), MAP_PRIVATE                       uffd-unit-tests
hugetlb-anon        MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB                        cow.c "hugetlb
                                                                                 (N kB)", e2b
                                                                                 "hugepage"
==================  ===========================================================  ================

Size in the name: ``anon-thp`` always carries its THP size, ``anon-thp (64 kB)``.  The hugetlb
types at the default huge page size keep upstream's plain name (``hugetlb``), other sizes carry
theirs: ``hugetlb (1048576 kB)``.  A size is written ``<N> kB`` (lib.kernel.system.size_label).

A MemType is a pytest parameter.  ``prepare(settings)`` runs in the pytest process before the
case: it enables the one THP size, or grows the hugetlb pool (compacting memory once and trying
again when a gigantic page cannot be found; a size that still fails is not tried again in the
run).  In the case, ``require()`` skips from probes only (the size offered, the pool's free
unreserved pages, the uffd feature bits) and ``map()`` creates the mapping: a hugetlb type
probes the pool first (too few free unreserved pages: a skip), and a refused mapping with the
pages there is a failure (docs/ARCHITECTURE.md rule 4).

``mismatches(region)`` reads /proc/self/smaps and says how a mapping differs from the type's
(MAP_SHARED or not, anonymous / shared-anon / memfd / MAP_HUGETLB, KernelPageSize, MADV_HUGEPAGE);
tests/test_memtypes.py holds every type to it.

Case names keep the words of an upstream program they mirror where it has its own (cow.c's
"with hugetlb (2048 kB)" is hugetlb-anon: cases/cow/backings.py has the table; e2b's
"hugepage" is hugetlb-anon; khugepaged.c's "madvise:anon" and pagemap_ioctl.c's "Hugetlb
shmem testing:" are their programs' own matrices).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from lib.kernel import abi, hugetlb_pool, libc, memory, needs, system

PAGE = system.PAGE_SIZE

ANON = "anon"
ANON_THP = "anon-thp"
SHARED_ANON = "shared-anon"
SHMEM = "shmem"
SHMEM_PRIVATE = "shmem-private"
SHMEM_MAP_PRIVATE = "shmem-map-private"
HUGETLB = "hugetlb"
HUGETLB_PRIVATE = "hugetlb-private"
HUGETLB_ANON = "hugetlb-anon"

KINDS = (ANON, ANON_THP, SHARED_ANON, SHMEM, SHMEM_PRIVATE, SHMEM_MAP_PRIVATE, HUGETLB, HUGETLB_PRIVATE,
         HUGETLB_ANON)
HUGETLB_KINDS = (HUGETLB, HUGETLB_PRIVATE, HUGETLB_ANON)
SHMEM_KINDS = (SHARED_ANON, SHMEM, SHMEM_PRIVATE, SHMEM_MAP_PRIVATE)
# uffd-unit-tests' five mem types, in its order
UFFD_UNIT_KINDS = (ANON, SHMEM, SHMEM_PRIVATE, HUGETLB, HUGETLB_PRIVATE)

_POOL_FAILED: dict[tuple[int, int], str] = {}  # (hugetlb size, pages) -> why growing failed (this run)


def missing_feature_for(hugetlb: bool, shmem: bool) -> int:
    """The UFFD_FEATURE_* a MISSING registration needs beyond anon memory."""
    if hugetlb:
        return int(abi.Feature.MISSING_HUGETLBFS)
    return int(abi.Feature.MISSING_SHMEM) if shmem else 0


def wp_feature_for(anonymous: bool) -> int:
    """The UFFD_FEATURE_* a WP registration needs: PAGEFAULT_FLAG_WP, and for shmem/hugetlb
    WP_HUGETLBFS_SHMEM."""
    f = int(abi.Feature.PAGEFAULT_FLAG_WP)
    return f if anonymous else f | int(abi.Feature.WP_HUGETLBFS_SHMEM)


def compact_memory() -> bool:
    """Ask the kernel to compact all zones (a trigger, nothing to restore); False if refused."""
    try:
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


def grow_pool(settings, size: int, pages: int) -> None:
    """At least ``pages`` free ``size`` hugetlb pages for the rest of the run (restored at its
    end), or a skip with the reason.  Gigantic pages need contiguous memory: when growing fails,
    compact memory once and try again; a (size, pages) that still fails is not tried again."""
    if size not in system.hugetlb_sizes():
        return  # the case skips in require() (needs.hugetlb_size)
    key = (size, pages)
    if key in _POOL_FAILED:
        pytest.skip(_POOL_FAILED[key])
    try:
        settings.hugetlb(size, pages)
        return
    except pytest.skip.Exception as e:
        if not system.is_root() or not compact_memory():
            _POOL_FAILED[key] = str(e.msg)
            raise
    try:
        settings.hugetlb(size, pages)
    except pytest.skip.Exception as e:
        _POOL_FAILED[key] = f"{e.msg} (also after compacting memory)"
        pytest.skip(_POOL_FAILED[key])


@dataclass(frozen=True)
class MemType:
    """One memory type: ``kind`` (one of KINDS) and ``size`` (the THP size of anon-thp, the
    huge page size of a hugetlb kind; 0 for base pages)."""

    kind: str
    size: int = 0
    pages: int = 0  # hugetlb pages a case may use at most; 0: 2 for gigantic pages, else 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown memory type {self.kind!r}")
        if (self.kind in HUGETLB_KINDS or self.kind == ANON_THP) != bool(self.size):
            raise ValueError(f"{self.kind}: size {self.size}")

    # -- naming ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.kind == ANON_THP:
            return f"{self.kind} ({system.size_label(self.size)})"
        if self.hugetlb and self.size != system.default_hugetlb_size():
            return f"{self.kind} ({system.size_label(self.size)})"
        return self.kind

    def __str__(self) -> str:
        return self.name

    # -- what the mapping is --------------------------------------------------------------
    @property
    def hugetlb(self) -> bool:
        return self.kind in HUGETLB_KINDS

    @property
    def thp(self) -> bool:
        return self.kind == ANON_THP

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous memory (a zap drops uffd-wp markers there,
        file and hugetlb memory keep them)."""
        return self.kind in (ANON, ANON_THP)

    @property
    def shmem(self) -> bool:
        return self.kind in SHMEM_KINDS

    @property
    def map_shared(self) -> bool:
        """Mapped MAP_SHARED (shmem-private is: only upstream's test logic treats it as private)."""
        return self.kind in (SHARED_ANON, SHMEM, SHMEM_PRIVATE, HUGETLB)

    @property
    def shared(self) -> bool:
        """uffd-unit-tests' ``shared`` flag: MAP_SHARED, except shmem-private."""
        return self.map_shared and self.kind != SHMEM_PRIVATE

    @property
    def file_backed(self) -> bool:
        """Has a file the suite can open again (memfd): aliases, fallocate punching, CONTINUE."""
        return self.kind in (SHMEM, SHMEM_PRIVATE, SHMEM_MAP_PRIVATE, HUGETLB, HUGETLB_PRIVATE)

    @property
    def page_size(self) -> int:
        """The unit faults are resolved and pages protected in: the huge page for hugetlb."""
        return self.size if self.hugetlb else PAGE

    @property
    def discard_advice(self) -> int:
        """The advice that discards content: MADV_REMOVE for shared memory, else MADV_DONTNEED."""
        return int(abi.Madv.REMOVE) if self.map_shared else int(abi.Madv.DONTNEED)

    @property
    def max_pages(self) -> int:
        if self.pages:
            return self.pages
        return 2 if self.size >= system.GiB else 16

    # -- userfaultfd features -------------------------------------------------------------
    @property
    def missing_feature(self) -> int:
        return missing_feature_for(self.hugetlb, self.shmem)

    @property
    def wp_feature(self) -> int:
        return wp_feature_for(self.anonymous)

    @property
    def minor_feature(self) -> int:
        """MINOR faults exist for shmem and hugetlbfs only (0 where they do not exist)."""
        if self.hugetlb:
            return int(abi.Feature.MINOR_HUGETLBFS)
        return int(abi.Feature.MINOR_SHMEM) if self.shmem else 0

    # -- pytest hooks ---------------------------------------------------------------------
    def prepare(self, settings) -> None:
        """In the pytest process: enable this THP size alone, or grow the hugetlb pool."""
        if self.thp:
            settings.thp_only_size(self.size)
        elif self.hugetlb:
            grow_pool(settings, self.size, self.max_pages)

    def require(self, features: int = 0, pages: int = 1) -> None:
        """In the case: skip unless the size is offered, ``pages`` huge pages are free and
        unreserved, and the uffd ``features`` are offered (probes, never the mapping itself)."""
        if self.thp:
            needs.thp(self.size)
        if self.hugetlb:
            needs.hugetlb_size(self.size)
            if self.file_backed:
                needs.memfd_hugetlb(self.size)
            want = min(pages, self.max_pages)
            avail = hugetlb_pool.available(self.size)
            if avail < want:
                pytest.skip(f"{hugetlb_pool.read(self.size)}: {want} free unreserved pages needed "
                            "(the pool could not be grown)")
        if features:
            needs.uffd_features(int(features))

    # -- memory ---------------------------------------------------------------------------
    def map(self, pages: int, populate: bool = False, *, noreserve: bool = False, align: int = 0) -> memory.Region:
        """``pages`` pages (huge pages for hugetlb, whole THPs rounded up for anon-thp) of this
        type, not populated unless ``populate``.

        ``noreserve``: a hugetlb type mapped MAP_NORESERVE (uffd-common maps its hugetlb areas
        so: a private mapping's reservation would belong to the mapping process alone).
        ``align``: a base-page type placed at an ``align``-aligned address (an mremap target,
        MADV_COLLAPSE); anon-thp is aligned to its THP size, hugetlb to its page size anyway."""
        if self.hugetlb and pages > self.max_pages:
            raise ValueError(f"{pages} pages of {self.name}: at most {self.max_pages}")
        size = pages * self.page_size
        if self.hugetlb:
            r = self._map_hugetlb(pages, size, noreserve)
        elif self.thp:
            r = memory.thp(-(-size // self.size) * self.size, self.size)
        else:
            r = self._map_base(size, align)
        r.kind = self.name
        if populate:
            libc.fill(r.addr, 0x5A, r.size)
        return r

    def _map_base(self, size: int, align: int) -> memory.Region:
        flags = abi.MAP_SHARED if self.map_shared else abi.MAP_PRIVATE
        fd = -1
        if self.kind in (ANON, SHARED_ANON):
            flags |= abi.MAP_ANONYMOUS
        else:
            fd = libc.memfd_create(f"kmm-{self.kind}", abi.MFD_CLOEXEC)
        try:
            if fd >= 0:
                os.ftruncate(fd, size)
            addr = _mmap_at(size, flags, fd, align)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return memory.Region(addr, size, PAGE, self.name, fd, self.map_shared, False, [(addr, size)])

    def _map_hugetlb(self, pages: int, size: int, noreserve: bool) -> memory.Region:
        # the skip comes from the pool, probed apart from the mapping (prepare() has tried to
        # size it); with the pages there, a refused mapping is the kernel's doing: a failure
        avail = hugetlb_pool.available(self.size)
        if avail < pages:
            pytest.skip(f"{hugetlb_pool.read(self.size)}: {pages} free unreserved pages needed for "
                        f"{self.name}, {avail} available (the pool could not be grown)")
        flags = (abi.MAP_SHARED if self.map_shared else abi.MAP_PRIVATE) | (abi.MAP_NORESERVE if noreserve else 0)
        fd = -1
        try:
            if self.kind == HUGETLB_ANON:
                flags |= abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.huge_size_flag(self.size)
            else:
                fd = libc.memfd_create(f"kmm-{self.kind}",
                                       abi.MFD_CLOEXEC | abi.MFD_HUGETLB | abi.huge_size_flag(self.size))
                os.ftruncate(fd, size)
            addr = libc.mmap(size, memory.PROT_RW, flags, fd, 0)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            raise AssertionError(f"setup step failed: mapping {pages} {self.name} pages failed "
                                 f"({os.strerror(e.errno or 0)}) although the pool had {avail} free "
                                 f"unreserved pages ({hugetlb_pool.read(self.size)})") from e
        return memory.Region(addr, size, self.size, self.name, fd, self.map_shared, True, [(addr, size)])

    # -- what the kernel mapped -----------------------------------------------------------
    def expected(self) -> Mapping:
        """The mapping this type must produce, as /proc/self/smaps shows it."""
        if self.kind in (ANON, ANON_THP):
            backing = "anon"
        elif self.kind == SHARED_ANON:
            backing = "/dev/zero"
        elif self.kind == HUGETLB_ANON:
            backing = "/anon_hugepage"
        else:
            backing = "memfd"
        return Mapping(self.map_shared, backing, self.page_size, self.thp)

    def mismatches(self, r: memory.Region) -> list[str]:
        """How the mapping of ``r`` differs from this type's (empty: it is this type)."""
        got, want = mapping_at(r.addr), self.expected()
        out = [f"{f}: {getattr(got, f)!r}, {self.name} is {getattr(want, f)!r}"
               for f in ("shared", "backing", "kernel_page_size", "hugepage_advised")
               if getattr(got, f) != getattr(want, f)]
        if self.thp and r.addr % self.size:
            out.append(f"start {r.addr:#x} not aligned to the THP size {system.size_label(self.size)}")
        return out


@dataclass(frozen=True)
class Mapping:
    """What /proc/self/smaps says of one VMA: MAP_SHARED (``s`` in the permissions), what backs
    it (``anon``: no file; ``/dev/zero``: MAP_SHARED|MAP_ANONYMOUS, a shmem inode of its own;
    ``memfd``: a memfd_create() file; ``/anon_hugepage``: MAP_HUGETLB without a file; else
    the path), KernelPageSize in bytes, and VM_HUGEPAGE (``hg`` in VmFlags: MADV_HUGEPAGE)."""

    shared: bool
    backing: str
    kernel_page_size: int
    hugepage_advised: bool


def mapping_at(addr: int, pid: int | str = "self") -> Mapping:
    """The VMA holding ``addr``, from /proc/<pid>/smaps (Documentation/filesystems/proc.rst)."""
    with open(f"/proc/{pid}/smaps") as f:
        lines = f.read().splitlines()
    head = -1
    for i, line in enumerate(lines):
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            try:
                start, end = (int(x, 16) for x in first.split("-", 1))
            except ValueError:
                continue
            if start <= addr < end:
                head = i
                break
    if head < 0:
        raise LookupError(f"no VMA holds {addr:#x} in /proc/{pid}/smaps")
    parts = lines[head].split(None, 5)
    path = parts[5].removesuffix(" (deleted)").strip() if len(parts) > 5 else ""
    backing = "memfd" if path.startswith("/memfd:") else (path or "anon")
    kps, flags = 0, []
    for line in lines[head + 1:]:
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            break
        if line.startswith("KernelPageSize:"):
            kps = int(line.split()[1]) * system.KiB
        elif line.startswith("VmFlags:"):
            flags = line.split()[1:]
    return Mapping(parts[1][3] == "s", backing, kps, "hg" in flags)


def _mmap_at(size: int, flags: int, fd: int, align: int) -> int:
    """mmap(), at an ``align``-aligned address when ``align`` (over a hole reserved for it)."""
    if not align:
        return libc.mmap(size, memory.PROT_RW, flags, fd, 0)
    hole = memory.aligned_anon(size, align)
    return libc.mmap(size, memory.PROT_RW, flags | abi.MAP_FIXED, fd, 0, addr=hole.addr)


def hugetlb_sizes_default_first() -> list[int]:
    """The kernel's hugetlb sizes, the default size first (2 MiB when it offers none)."""
    sizes = system.hugetlb_sizes() or (2 * system.MiB,)
    return sorted(sizes, key=lambda s: (s != system.default_hugetlb_size(), s))


def mem_types(kinds: tuple[str, ...] = UFFD_UNIT_KINDS, hugetlb_sizes: list[int] | None = None,
              thp_sizes: list[int] | None = None) -> list[MemType]:
    """Every (kind, size) pair of ``kinds``: base kinds once, hugetlb kinds once per hugetlb
    size (default first), anon-thp once per anon THP size the kernel offers."""
    hs = hugetlb_sizes if hugetlb_sizes is not None else hugetlb_sizes_default_first()
    ts = thp_sizes if thp_sizes is not None else list(system.thp_sizes())
    out: list[MemType] = []
    for k in kinds:
        if k in HUGETLB_KINDS:
            out.extend(MemType(k, s) for s in hs)
        elif k == ANON_THP:
            out.extend(MemType(k, s) for s in ts)
        else:
            out.append(MemType(k))
    return out
