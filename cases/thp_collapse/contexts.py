"""The two ways a THP-collapse case collapses memory (khugepaged.c c->collapse()), and the case
processes.

* ``madvise`` -- MADV_COLLAPSE, retried on EAGAIN (madvise(2): transient).
* ``khugepaged`` -- the range is advised MADV_HUGEPAGE and the collapse awaited on the range's
  state and on the ``khugepaged/full_scans`` counter (two more full scans), following
  khugepaged's progress (cases/thp_collapse/khwait.py): a khugepaged that makes none is "cannot
  test", never a kernel failure.

:func:`in_child` runs a function in a forked child (lib.kernel.tasks.run_in_child) and makes
its verdict the case's (khugepaged.c's fork cases).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from cases.thp_collapse import khwait
from cases.thp_collapse.matrix import ANON, KH_DEADLINE, PMD_SIZE, Variant, order_of
from cases.thp_collapse.regions import Area, check_huge, describe, fault, folio_orders, huge_windows, setup_area
from lib import check
from lib.kernel import abi, libc, system, tasks

COLLAPSE_ATTEMPTS = 3


def madvise_collapse(addr: int, length: int) -> int:
    """MADV_COLLAPSE, retried on EAGAIN (khugepaged.c's madvise_collapse_retry retries once;
    madvise(2) documents EAGAIN as transient, and under load one retry was seen not to be
    enough), at most COLLAPSE_ATTEMPTS times; 0 or the errno."""
    for attempt in range(COLLAPSE_ATTEMPTS):
        try:
            libc.madvise(addr, length, abi.Madv.COLLAPSE)
            return 0
        except OSError as e:
            if e.errno != 11 or attempt == COLLAPSE_ATTEMPTS - 1:
                return e.errno
    return 0


def kh_counter(name: str) -> int:
    return int(system.read_text(f"{system.THP}/khugepaged/{name}"))


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
    knob = " ".join(f"{k}={system.read_text(f'{system.THP}/khugepaged/{k}', '?')}" for k in (
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
        a = setup_area(ANON, PMD_SIZE)
        libc.madvise(a.addr, PMD_SIZE, abi.Madv.NOHUGEPAGE)
        libc.touch_write(a.addr, 1)
        libc.madvise(a.addr, PMD_SIZE, abi.Madv.HUGEPAGE)
        _registered.append(a)


def collapse(v: Variant, area: Area, nwin: int, expect: bool, what: str, sanity: bool = True) -> None:
    """khugepaged.c c->collapse() for the variant's context, then check_huge."""
    length = nwin * v.size
    if sanity:
        check_huge(area, 0, v.size, f"{what}: sanity, before the collapse")
    if v.khugepaged:
        register_with_khugepaged()
        libc.madvise(area.addr, length, abi.Madv.HUGEPAGE)

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
            libc.madvise(area.addr, length, abi.Madv.POPULATE_READ)
        libc.madvise(area.addr, length, abi.Madv.NOHUGEPAGE)
        check.note(f"{what}: khugepaged collapsed={r.collapsed} after {r.scans} full scans, "
                   f"pages_collapsed +{r.pages_collapsed}, {r.seconds:.2f}s")
    else:
        libc.madvise(area.addr, length, abi.Madv.HUGEPAGE)  # clear VM_NOHUGEPAGE
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
    libc.madvise(area.addr, v.size, abi.Madv.HUGEPAGE)
    return area


# ---------------------------------------------------------------------------------------
# processes


def in_child(fn: Callable[[], object], timeout: float = KH_DEADLINE - 20) -> None:
    """Run ``fn`` in a forked child; its failure (or CannotTest, or skip) becomes this process's."""
    tasks.run_in_child(fn, timeout, skip_types=(pytest.skip.Exception,), skip=pytest.skip)
