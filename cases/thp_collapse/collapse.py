"""Shared pieces of the THP-collapse area: memory kinds, collapse contexts, probes and oracles.

Upstream model: tools/testing/selftests/mm/khugepaged.c (two collapse contexts crossed with
three memory types) and the anon-THP collapse cases of cow.c.  The contexts:

* ``madvise`` -- MADV_COLLAPSE (Documentation/admin-guide/mm/transhuge.rst, "MADV_COLLAPSE"):
  a synchronous collapse that ignores the sysfs ``enabled`` knobs and the ``max_ptes_*``
  limits.  Like upstream's __madvise_collapse the context runs with ``enabled=never`` and
  ``shmem_enabled=never`` (keeps khugepaged out of the way and shows that MADV_COLLAPSE
  ignores sysfs); MADV_COLLAPSE is retried once on EAGAIN.
* ``khugepaged`` -- the khugepaged thread with the knobs upstream pushes (scan and alloc
  sleeps 10 ms, pages_to_scan 8*nr, max_ptes_none nr-1, max_ptes_swap nr/8,
  max_ptes_shared nr/2).  A collapse is awaited on the range's state and on the
  ``khugepaged/full_scans`` counter (two more full scans), following khugepaged's progress
  (cases/thp_collapse/khwait.py): a khugepaged that makes none is "cannot test", never a
  kernel failure.

Sizes: MADV_COLLAPSE collapses to the PMD size only (cases/thp_collapse/probes.py), so the
madvise context runs at the PMD size; the khugepaged context also runs at every mTHP size,
skipped unless the kernel has khugepaged mTHP collapse (a sysfs fact, probes.mthp_khugepaged).
Regular files run where the kernel config says the kernel collapses them (probes.file_collapse),
on a filesystem the suite mounts itself (cases/thp_collapse/scratchfs.py).

All knobs are set in ``Variant.prepare`` (the pytest process) and restored after the case.

Every oracle here is a plain function; tests/test_thp_collapse_oracles.py feeds each of them
a state that must make it fail (negative controls).
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass

import pytest

from cases.thp_collapse import khwait, probes
from cases.thp_collapse.scratchfs import ScratchFs, Unavailable
from lib import check
from lib.kernel import abi, libc, system, tasks
from lib.kernel.pagemap import Pagemap, folio_order
from lib.runner import isolation

PS = libc.PAGE_SIZE
PMD = system.pmd_size()
NR = PMD // PS if PMD else 0
KH = "khugepaged"
RW = abi.PROT_READ | abi.PROT_WRITE
MADV = abi.Madv

# memory kinds (khugepaged.c mem_ops): anon, shmem (memfd), and a regular file opened
# read-only ("file": the CONFIG_READ_ONLY_THP_FOR_FS path) or read-write ("file-rw": needs
# file collapse of large-folio page caches)
ANON, SHMEM, FILE, FILE_RW = "anon", "shmem", probes.FILE, probes.FILE_RW
FILES = (FILE, FILE_RW)
SMAPS_FIELD = {ANON: "AnonHugePages", SHMEM: "ShmemPmdMapped", FILE: "FilePmdMapped", FILE_RW: "FilePmdMapped"}


def label(size: int) -> str:
    return system.size_label(size)


def order_of(size: int) -> int:
    return (size // PS).bit_length() - 1


def thp_sizes() -> list[int]:
    """The PMD size first, then every other anon THP size (mTHP) the kernel offers."""
    if not PMD:
        return []
    return [PMD] + [s for s in system.thp_sizes() if s != PMD]


# ---------------------------------------------------------------------------------------
# variants: (case, context, memory, size) with the settings they need


def _kh_defaults() -> list[tuple[str, str | int]]:
    return [
        ("enabled", "madvise"),
        ("shmem_enabled", "advise"),
        (f"{KH}/defrag", 1),
        (f"{KH}/scan_sleep_millisecs", 10),
        (f"{KH}/alloc_sleep_millisecs", 10),
        (f"{KH}/pages_to_scan", NR * 8),
        (f"{KH}/max_ptes_none", NR - 1),
        (f"{KH}/max_ptes_swap", NR // 8),
        (f"{KH}/max_ptes_shared", NR // 2),
    ]


def knobs(ctx: str, size: int) -> list[tuple[str, str | int]]:
    """The sysfs values a context runs with (relative to /sys/kernel/mm/transparent_hugepage)."""
    out: list[tuple[str, str | int]] = []
    if ctx == "madvise":
        out += [("enabled", "never"), ("shmem_enabled", "never")]
    else:
        # restart the khugepaged thread first (it stops when nothing it serves is enabled), so
        # it starts the case awake with the case's knobs instead of in a sleep begun earlier
        out += [("enabled", "never"), ("shmem_enabled", "never")]
        out += _kh_defaults()
        if size != PMD:
            # anon mTHP only: shmem PMD collapse would keep khugepaged running for shmem's sake
            out.append(("shmem_enabled", "never"))
    # exactly one anon size: the PMD size through 'inherit' (as upstream), an mTHP size 'always'
    for s in system.thp_sizes():
        rel = f"hugepages-{s // system.KiB}kB/enabled"
        if s == size:
            out.append((rel, "inherit" if s == PMD else "always"))
        else:
            out.append((rel, "never"))
    for s in system.shmem_thp_sizes():
        rel = f"hugepages-{s // system.KiB}kB/shmem_enabled"
        if os.path.exists(f"{system.THP}/{rel}"):
            out.append((rel, "inherit" if s == PMD else "never"))
    return out


@dataclass(frozen=True)
class Variant:
    """One cell of a collapse matrix; a pytest parameter whose ``prepare`` sets the knobs."""

    case: str
    ctx: str  # "madvise" | "khugepaged"
    mem: str = ANON
    size: int = PMD
    extra: tuple[tuple[str, str | int], ...] = ()
    settings_ctx: str = ""  # settings of another context (madvise_retracted_page_tables)

    @property
    def name(self) -> str:
        suffix = "" if self.size == PMD else f", {label(self.size)}"
        return f"{self.case} ({self.ctx}:{self.mem}{suffix})"

    def __str__(self) -> str:
        return self.name

    @property
    def nr(self) -> int:
        return self.size // PS

    @property
    def khugepaged(self) -> bool:
        return self.ctx == "khugepaged"

    def prepare(self, settings) -> None:
        if not PMD:
            return  # the case skips (needs.thp)
        for rel, value in knobs(self.settings_ctx or self.ctx, self.size) + list(self.extra):
            settings.thp(rel, value)


# a khugepaged-context case may wait twice for khugepaged (khwait.BOUND_S each at worst)
KH_DEADLINE = 2 * khwait.BOUND_S + 60


def variants(case: str, ctxs=("madvise", "khugepaged"), mems=(ANON,), sizes: bool = True, **extra) -> list:
    """pytest params of ``case`` crossed with contexts, memory kinds and THP sizes (anon memory
    in the khugepaged context only: MADV_COLLAPSE collapses to the PMD size only).

    ``extra`` maps a context to additional knobs, e.g. ``khugepaged=(("khugepaged/max_ptes_none", 256),)``.
    """
    out = []
    for ctx in ctxs:
        marks = [pytest.mark.deadline(KH_DEADLINE)] if ctx == "khugepaged" else []
        for mem in mems:
            for size in (thp_sizes() if sizes and mem == ANON and ctx == "khugepaged" else [PMD]) or [0]:
                v = Variant(case, ctx, mem, size, tuple(extra.get(ctx, ())))
                out.append(pytest.param(v, id=v.name, marks=marks))
    return out


# ---------------------------------------------------------------------------------------
# memory


@dataclass
class Area:
    """A PMD-aligned mapping of one memory kind (khugepaged.c setup_area)."""

    addr: int
    size: int
    mem: str
    fd: int = -1

    def page(self, i: int) -> int:
        return self.addr + i * PS

    def close(self) -> None:
        with contextlib.suppress(OSError):
            libc.munmap(self.addr, self.size)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def reserve(size: int, align: int = 0) -> int:
    """Address space of ``size`` bytes aligned to ``align`` (PMD by default), PROT_NONE."""
    align = align or PMD
    raw = libc.mmap(size + align, abi.PROT_NONE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_NORESERVE)
    start = (raw + align - 1) & ~(align - 1)
    if start > raw:
        libc.munmap(raw, start - raw)
    tail = raw + size + align - (start + size)
    if tail:
        libc.munmap(start + size, tail)
    return start


_file_dir = ""  # the scratch filesystem's mount point, set by the file_fs fixture before the case forks


def file_dir() -> str:
    """Where file-backed areas live: $KMM_FILE_DIR, else the scratch filesystem (file_fs)."""
    d = os.environ.get("KMM_FILE_DIR") or _file_dir
    if not d:
        raise RuntimeError("a file case ran without the file_fs fixture (import it into the test module)")
    return d


@pytest.fixture(scope="module")
def scratch_fs():
    """One scratch filesystem per test module, made only when a file case is going to run."""
    fs = ScratchFs()
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture(autouse=True)
def file_fs(request, scratch_fs):
    """Before a file case the kernel claims to run (probes.file_collapse), in the pytest process:
    mount the scratch filesystem (skip naming it when it cannot be made)."""
    global _file_dir
    cs = getattr(request.node, "callspec", None)
    mem = getattr(cs.params.get("v") if cs else None, "mem", None)
    if mem in FILES and not os.environ.get("KMM_FILE_DIR") and system.is_root() and \
            probes.file_collapse(mem, system.kernel_config())[0]:
        try:
            _file_dir = scratch_fs.ensure()
        except Unavailable as e:
            pytest.skip(str(e))
    yield


def pattern_bytes(first: int, n: int) -> bytes:
    """The khugepaged.c fill pattern: int ``i + 0xdead0000`` at the start of page i."""
    out = bytearray(n * PS)
    for i in range(n):
        struct.pack_into("<I", out, i * PS, (first + i + 0xDEAD0000) & 0xFFFFFFFF)
    return bytes(out)


def setup_area(mem: str, size: int) -> Area:
    """khugepaged.c setup_area: anon private, memfd shared, or a regular file filled with the
    pattern then reopened read-only (mapped PROT_READ|PROT_EXEC private) or read-write (shared)."""
    addr = reserve(size)
    if mem == ANON:
        libc.mmap(size, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED, addr=addr)
        return Area(addr, size, mem)
    if mem == SHMEM:
        fd = os.memfd_create("kmm-collapse-shmem", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        libc.mmap(size, RW, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=addr)
        return Area(addr, size, mem, fd)
    fd, path = tempfile.mkstemp(prefix="kmm-collapse-", dir=file_dir())
    try:
        os.write(fd, pattern_bytes(0, size // PS))
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
            libc.mmap(size, RW, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=addr)
    finally:
        os.unlink(path)
    return Area(addr, size, mem, fd)


def fault(area: Area, start: int, end: int) -> None:
    """khugepaged.c fault: write the pattern into pages [start, end) (anon, shmem); read-fault
    them with MADV_POPULATE_READ (files)."""
    if end <= start:
        return
    if area.mem in FILES:
        libc.madvise(area.addr + start, end - start, MADV.POPULATE_READ)
        return
    for i in range(start // PS, end // PS):
        libc.write(area.page(i), struct.pack("<I", (i + 0xDEAD0000) & 0xFFFFFFFF))


def bad_pages(addr: int, start: int, end: int) -> list[tuple[int, int]]:
    """Pages in [start, end) whose first int is not the pattern: [(page index, value)]."""
    if end <= start:
        return []
    data = libc.read(addr + start, end - start)
    out = []
    for k in range((end - start) // PS):
        i = start // PS + k
        v = struct.unpack_from("<I", data, k * PS)[0]
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
    hist = Counter(folio_orders(addr, length // PS)) if system.is_root() else Counter()
    orders = ", ".join(f"{'none' if k is None else k}: {v}" for k, v in sorted(hist.items(), key=lambda kv: (
        kv[0] is None, kv[0] or 0)))
    return f"{SMAPS_FIELD[mem]} {pmd_mapped_kb(addr, length, mem)} kB; folio orders {{{orders}}}"


def huge_windows(addr: int, nwin: int, size: int, mem: str = ANON) -> int:
    """How many ``size`` windows from ``addr`` are backed by one folio of that size and mapped
    as such: for the PMD size, the smaps PMD counter (khugepaged.c check_huge) confirmed by the
    folio order of each window; for an mTHP size, the folio order (mTHPs are PTE-mapped)."""
    n = size // PS
    if size == PMD:
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
        raise AssertionError(f"{what}: expected {nwin} of {total} {label(size)} windows huge, got {got} "
                             f"({describe(area.addr, area.size, area.mem)})")


def pte_mapped_thp(addr: int, size: int, mem: str = ANON) -> bool:
    """True when [addr, addr+size) is one THP folio of ``size`` that is mapped by PTEs only."""
    orders = folio_orders(addr, size // PS)
    return set(orders) == {order_of(size)} and pmd_mapped_kb(addr, size, mem) == 0


def pmd_mapped_thp(addr: int, size: int, mem: str = ANON) -> bool:
    orders = folio_orders(addr, size // PS)
    return set(orders) == {order_of(size)} and pmd_mapped_kb(addr, size, mem) == size // 1024


# ---------------------------------------------------------------------------------------
# collapse contexts


COLLAPSE_ATTEMPTS = 3


def madvise_collapse(addr: int, length: int) -> int:
    """MADV_COLLAPSE, retried on EAGAIN (khugepaged.c's madvise_collapse_retry retries once;
    madvise(2) documents EAGAIN as transient, and under load one retry was seen not to be
    enough), at most COLLAPSE_ATTEMPTS times; 0 or the errno."""
    for attempt in range(COLLAPSE_ATTEMPTS):
        try:
            libc.madvise(addr, length, MADV.COLLAPSE)
            return 0
        except OSError as e:
            if e.errno != 11 or attempt == COLLAPSE_ATTEMPTS - 1:
                return e.errno
    return 0


def kh_counter(name: str) -> int:
    return int(system.read_text(f"{system.THP}/{KH}/{name}"))


ScanResult = khwait.ScanResult


def wait_for_scan(is_huge, region=lambda: None, scans: int = 2, min_scans: int = 2, **kw) -> khwait.ScanResult:
    """khugepaged.c wait_for_scan: until ``is_huge()`` or ``scans`` more full scans, following
    khugepaged's progress (khwait.wait: counters, its CPU time, ``region()``); a khugepaged that
    makes none raises check.CannotTest.  ``min_scans`` full scans suffice where no collapse is
    expected (khugepaged may idle once it found nothing to do)."""
    pid = khugepaged_pid()
    kw.setdefault("read", kh_counter)
    return khwait.wait(is_huge, cpu=lambda: khwait.thread_cpu_ticks(pid), region=region, scans=scans,
                       min_scans=min_scans, diag=khugepaged_diag, **kw)


def hugepage_vmas() -> list[tuple[int, str, int]]:
    """(pid, comm, MiB) of every process with VM_HUGEPAGE ('hg') VMAs: what khugepaged scans."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        total = 0
        try:
            with open(f"/proc/{d}/smaps") as f:
                size = 0
                for line in f:
                    head = line.split(" ", 1)[0]
                    if "-" in head and ":" not in head:
                        s, e = (int(x, 16) for x in head.split("-"))
                        size = e - s
                    elif line.startswith("VmFlags:") and " hg" in line:
                        total += size
            comm = system.read_text(f"/proc/{d}/comm", "?")
        except (OSError, ValueError):
            continue
        if total:
            out.append((int(d), comm, total // system.MiB))
    return out


def khugepaged_diag() -> str:
    big = sorted(hugepage_vmas(), key=lambda t: -t[2])[:5]
    pid = khugepaged_pid()
    where = ""
    if pid:
        stack = system.read_text(f"/proc/{pid}/stack", "").split()
        sched = system.read_text(f"/proc/{pid}/sched", "")
        sw = next((ln.split(":")[1].strip() for ln in sched.splitlines() if ln.startswith("nr_switches")), "?")
        where = f" (pid {pid}, {sw} switches, at {' '.join(x for x in stack if '+' in x)[:160]})"
    knob = " ".join(f"{k}={system.read_text(f'{system.THP}/{KH}/{k}', '?')}" for k in (
        "alloc_sleep_millisecs", "pages_to_scan", "defrag"))
    return (f"khugepaged thread {'running' + where if pid else 'not running'}; {knob}; MADV_HUGEPAGE memory: "
            + (", ".join(f"pid {p} {c} {m} MiB" for p, c, m in big) or "none"))


def khugepaged_pid() -> int:
    for pid, comm, fields in tasks.proc_stats():
        if comm == "khugepaged" and int(fields[1]) == 2:  # a kernel thread (child of kthreadd)
            return pid
    return 0


_registered: list[Area] = []


def register_with_khugepaged() -> None:
    """Make sure khugepaged keeps scanning this process: a populated anon MADV_HUGEPAGE VMA
    registers the mm (khugepaged_enter_vma) and gives khugepaged work in it.  Upstream's single
    process is registered by its anon cases.  Observed on 6.18: MADV_HUGEPAGE on a shmem VMA
    alone did not get the mm scanned, and an mm with nothing populated was dropped after one
    visit (khugepaged then idles: no more full scans)."""
    if not _registered:
        a = setup_area(ANON, PMD)
        libc.madvise(a.addr, PMD, MADV.NOHUGEPAGE)
        libc.touch_write(a.addr, 1)
        libc.madvise(a.addr, PMD, MADV.HUGEPAGE)
        _registered.append(a)


def collapse(v: Variant, area: Area, nwin: int, expect: bool, what: str, sanity: bool = True) -> None:
    """khugepaged.c c->collapse() for the variant's context, then check_huge."""
    length = nwin * v.size
    if sanity:
        check_huge(area, 0, v.size, f"{what}: sanity, before the collapse")
    if v.khugepaged:
        register_with_khugepaged()
        libc.madvise(area.addr, length, MADV.HUGEPAGE)

        alias = 0
        if area.mem != ANON:
            # file/shmem: khugepaged collapses the page cache and retracts the page table; watch
            # the page cache through a second (read-only) mapping of the first page of each window
            alias = libc.mmap(length, abi.PROT_READ, abi.MAP_SHARED, area.fd, 0)

        seen = {"huge": 0}

        def is_huge() -> bool:
            if alias:
                for w in range(nwin):
                    libc.touch_read(alias + w * v.size)
                seen["huge"] = sum(folio_orders(alias + w * v.size, 1) == [order_of(v.size)] for w in range(nwin))
            else:
                seen["huge"] = huge_windows(area.addr, nwin, v.size, area.mem)
            return seen["huge"] == nwin

        try:
            # where no collapse is expected one full scan is enough once khugepaged idles
            r = wait_for_scan(is_huge, region=lambda: seen["huge"], min_scans=2 if expect else 1)
        finally:
            if alias:
                libc.munmap(alias, length)
        if area.mem != ANON:
            # the PMD mapping appears on the next fault (khugepaged.c refaults after the wait)
            libc.madvise(area.addr, length, MADV.POPULATE_READ)
        libc.madvise(area.addr, length, MADV.NOHUGEPAGE)
        check.note(f"{what}: khugepaged collapsed={r.collapsed} after {r.scans} full scans, "
                   f"pages_collapsed +{r.pages_collapsed}, {r.seconds:.2f}s")
    else:
        libc.madvise(area.addr, length, MADV.HUGEPAGE)  # clear VM_NOHUGEPAGE
        ret = madvise_collapse(area.addr, length)
        if (ret == 0) != expect:
            raise AssertionError(f"{what}: bad return value: MADV_COLLAPSE gave {check.errname(ret or None)}, "
                                 f"expected {'success' if expect else 'failure'} "
                                 f"({describe(area.addr, area.size, area.mem)})")
    check_huge(area, nwin if expect else 0, v.size, what)


def alloc_hpage(v: Variant) -> Area:
    """khugepaged.c alloc_hpage: one PMD, fully faulted, collapsed by MADV_COLLAPSE, then
    MADV_HUGEPAGE."""
    area = setup_area(v.mem, v.size)
    fault(area, 0, v.size)
    ret = madvise_collapse(area.addr, v.size)
    if ret:
        raise AssertionError(f"alloc_hpage: MADV_COLLAPSE failed: {check.strerror(ret)}")
    check_huge(area, 1, v.size, "alloc_hpage")
    libc.madvise(area.addr, v.size, MADV.HUGEPAGE)
    return area


# ---------------------------------------------------------------------------------------
# preconditions (probes): skip with a measured reason


def require(v: Variant) -> None:
    """Skip unless the kernel claims the variant's collapse (config, sysfs: probes.py); never
    by trying the collapse the case tests."""
    if not PMD:
        pytest.skip("THP not supported (no hpage_pmd_size)")
    if not system.is_root():
        pytest.skip("needs root: PFNs and /proc/kpageflags (folio orders) and THP sysfs")
    if v.size != PMD:
        if not v.khugepaged:
            raise RuntimeError(f"{v.name}: MADV_COLLAPSE collapses to the PMD size only; no such variant exists")
        ok, why = probes.mthp_khugepaged(v.size // system.KiB, system.THP)
        check.note(why)
        if not ok:
            pytest.skip(why)
    if v.mem in FILES:
        ok, why = probes.file_collapse(v.mem, system.kernel_config())
        check.note(why)
        if not ok:
            pytest.skip(why)
        check.note(f"file on {fs_type(file_dir())}")


def fs_type(path: str) -> str:
    """'xfs (/tmp/kmm-collapse-fs-1-x/mnt)': the filesystem type of the mount holding ``path``."""
    best, fstype = "", "?"
    real = os.path.realpath(path)
    for line in system.read_text("/proc/mounts", "").splitlines():
        parts = line.split()
        if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) and \
                len(parts[1]) >= len(best):
            best, fstype = parts[1], parts[2]
    return f"{fstype} ({path})"


# ---------------------------------------------------------------------------------------
# processes


def in_child(fn, timeout: float = KH_DEADLINE - 20) -> None:
    """Run ``fn`` in a forked, isolated child; its failure becomes this process's failure."""
    o = isolation.run_isolated(fn, timeout, skip_types=(pytest.skip.Exception,))
    if o.kind == "skip":
        pytest.skip(o.message)
    if o.kind == "error" and o.message.startswith(check.CANNOT_TEST_PREFIX):
        raise check.CannotTest(f"in the child: {o.message.removeprefix(check.CANNOT_TEST_PREFIX)}")
    if o.kind != "pass":
        raise AssertionError(f"in the child: {o.message}")


# ---------------------------------------------------------------------------------------
# userfaultfd helpers (rule 1: registered memory is touched only through lib.kernel.libc, from a
# thread that does not hold the GIL while blocked)


class Toucher:
    """A thread that touches one page at a time on request and says when it is done."""

    def __init__(self) -> None:
        self.req_r, self.req_w = os.pipe2(os.O_CLOEXEC)
        self.done_r, self.done_w = os.pipe2(os.O_CLOEXEC)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            raw = os.read(self.req_r, 17)
            if len(raw) < 17:
                return
            op, addr, val = raw[0:1], int.from_bytes(raw[1:9], "little"), int.from_bytes(raw[9:17], "little")
            if op == b"w":
                libc.touch_write(addr, val & 0xFF)
            else:
                libc.touch_read(addr)
            os.write(self.done_w, b"d")

    def request(self, op: str, addr: int, val: int = 0) -> None:
        os.write(self.req_w, op.encode() + addr.to_bytes(8, "little") + val.to_bytes(8, "little"))

    def close(self) -> None:
        os.close(self.req_w)
        self.t.join(5)
        for fd in (self.req_r, self.done_r, self.done_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def touch_outcome(u, toucher: Toucher, op: str, addr: int, val: int = 0, timeout: float = 5.0):
    """Touch ``addr`` in the toucher thread; returns the uffd message it raised (None when the
    access completed without one).  A raised fault is left for the caller to resolve."""
    toucher.request(op, addr, val)
    p = select.poll()
    p.register(u.fd, select.POLLIN)
    p.register(toucher.done_r, select.POLLIN)
    ev = p.poll(int(timeout * 1000))
    if not ev:
        raise AssertionError(f"{op} at {addr:#x}: neither completed nor faulted within {timeout}s")
    fds = {fd for fd, _ in ev}
    if u.fd in fds:
        return u.read_msg(timeout)
    os.read(toucher.done_r, 1)
    return None


def wait_done(toucher: Toucher, timeout: float = 5.0) -> None:
    p = select.poll()
    p.register(toucher.done_r, select.POLLIN)
    if not p.poll(int(timeout * 1000)):
        raise AssertionError(f"the access did not complete within {timeout}s after the fault was resolved")
    os.read(toucher.done_r, 1)


def wp_kept(u, addr: int, npages: int, protected: list[bool], toucher: Toucher) -> None:
    """Oracle: every page marked in ``protected`` still has pagemap bit 57 and a write to it
    raises a WP fault (resolved by un-protecting that page); unprotected pages write freely.
    The written byte is the page's old first byte, so contents are not changed."""
    with Pagemap() as pm:
        bits = [e.uffd_wp for e in pm.entries(addr, npages)]
    lost = [i for i in range(npages) if protected[i] and not bits[i]]
    if lost:
        raise AssertionError(f"uffd-wp bit 57 lost on {len(lost)} protected page(s), first {lost[:8]}")
    for i in range(npages):
        a = addr + i * PS
        old = libc.read(a, 1)[0]
        m = touch_outcome(u, toucher, "w", a, old)
        if protected[i]:
            if m is None:
                raise AssertionError(f"write to protected page {i} did not trap (pagemap bit 57 was set)")
            if not (m.is_wp and (m.address & ~(PS - 1)) == a):
                raise AssertionError(f"write to protected page {i}: unexpected uffd message {m}")
            u.writeprotect(a, PS, False)
            wait_done(toucher)
        elif m is not None:
            raise AssertionError(f"write to unprotected page {i} trapped: {m}")
