"""The THP-collapse case matrix: memory kinds, THP sizes, the sysfs knobs of each collapse
context, :class:`Variant` (one cell) and :func:`params` (a case crossed with contexts, memory
kinds and sizes), and :func:`require` (skip from probes only).

Upstream model: tools/testing/selftests/mm/khugepaged.c (two collapse contexts crossed with
three memory types) and the anon-THP collapse cases of cow.c.  The contexts:

* ``madvise`` -- MADV_COLLAPSE (Documentation/admin-guide/mm/transhuge.rst, "MADV_COLLAPSE"):
  a synchronous collapse that ignores the sysfs ``enabled`` knobs and the ``max_ptes_*``
  limits.  Like upstream's __madvise_collapse the context runs with ``enabled=never`` and
  ``shmem_enabled=never`` (keeps khugepaged out of the way and shows that MADV_COLLAPSE
  ignores sysfs).
* ``khugepaged`` -- the khugepaged thread with the knobs upstream pushes (scan and alloc
  sleeps 10 ms, pages_to_scan 8*nr, max_ptes_none nr-1, max_ptes_swap nr/8,
  max_ptes_shared nr/2).

Sizes: MADV_COLLAPSE collapses to the PMD size only (cases/thp_collapse/probes.py), so the
madvise context runs at the PMD size; the khugepaged context also runs at every mTHP size,
skipped unless the kernel has khugepaged mTHP collapse (a sysfs fact, probes.mthp_khugepaged).
Regular files run where the kernel config says the kernel collapses them (probes.file_collapse),
on a filesystem the suite mounts itself (cases/thp_collapse/scratchfs.py).

All knobs are set in ``Variant.prepare`` (the pytest process) and restored after the case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from cases.thp_collapse import khwait, probes, scratchfs
from lib import check
from lib.kernel import libc, system

PAGE_SIZE = libc.PAGE_SIZE
PMD_SIZE = system.pmd_size()
PMD_PAGES = PMD_SIZE // PAGE_SIZE if PMD_SIZE else 0

# memory kinds (khugepaged.c mem_ops): anon, shmem (memfd), and a regular file opened
# read-only ("file": the CONFIG_READ_ONLY_THP_FOR_FS path) or read-write ("file-rw": needs
# file collapse of large-folio page caches)
ANON, SHMEM, FILE, FILE_RW = "anon", "shmem", probes.FILE, probes.FILE_RW
FILES = (FILE, FILE_RW)
SMAPS_FIELD = {ANON: "AnonHugePages", SHMEM: "ShmemPmdMapped", FILE: "FilePmdMapped", FILE_RW: "FilePmdMapped"}


def order_of(size: int) -> int:
    return (size // PAGE_SIZE).bit_length() - 1


def thp_sizes() -> list[int]:
    """The PMD size first, then every other anon THP size (mTHP) the kernel offers."""
    if not PMD_SIZE:
        return []
    return [PMD_SIZE] + [s for s in system.thp_sizes() if s != PMD_SIZE]


# ---------------------------------------------------------------------------------------
# variants: (case, context, memory, size) with the settings they need


def _kh_defaults() -> list[tuple[str, str | int]]:
    return [
        ("enabled", "madvise"),
        ("shmem_enabled", "advise"),
        ("khugepaged/defrag", 1),
        ("khugepaged/scan_sleep_millisecs", 10),
        ("khugepaged/alloc_sleep_millisecs", 10),
        ("khugepaged/pages_to_scan", PMD_PAGES * 8),
        ("khugepaged/max_ptes_none", PMD_PAGES - 1),
        ("khugepaged/max_ptes_swap", PMD_PAGES // 8),
        ("khugepaged/max_ptes_shared", PMD_PAGES // 2),
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
        if size != PMD_SIZE:
            # anon mTHP only: shmem PMD collapse would keep khugepaged running for shmem's sake
            out.append(("shmem_enabled", "never"))
    # exactly one anon size: the PMD size through 'inherit' (as upstream), an mTHP size 'always'
    for s in system.thp_sizes():
        rel = f"hugepages-{s // system.KiB}kB/enabled"
        if s == size:
            out.append((rel, "inherit" if s == PMD_SIZE else "always"))
        else:
            out.append((rel, "never"))
    for s in system.shmem_thp_sizes():
        rel = f"hugepages-{s // system.KiB}kB/shmem_enabled"
        if os.path.exists(f"{system.THP}/{rel}"):
            out.append((rel, "inherit" if s == PMD_SIZE else "never"))
    return out


@dataclass(frozen=True)
class Variant:
    """One cell of a collapse matrix; a pytest parameter whose ``prepare`` sets the knobs."""

    case: str
    ctx: str  # "madvise" | "khugepaged"
    mem: str = ANON
    size: int = PMD_SIZE
    extra: tuple[tuple[str, str | int], ...] = ()
    settings_ctx: str = ""  # settings of another context (madvise_retracted_page_tables)

    @property
    def name(self) -> str:
        suffix = "" if self.size == PMD_SIZE else f", {system.size_label(self.size)}"
        return f"{self.case} ({self.ctx}:{self.mem}{suffix})"

    def __str__(self) -> str:
        return self.name

    @property
    def nr(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def khugepaged(self) -> bool:
        return self.ctx == "khugepaged"

    def prepare(self, settings) -> None:
        if not PMD_SIZE:
            return  # the case skips (needs.thp)
        for rel, value in knobs(self.settings_ctx or self.ctx, self.size) + list(self.extra):
            settings.thp(rel, value)


# a khugepaged-context case may wait twice for khugepaged (khwait.BOUND_S each at worst)
KH_DEADLINE = 2 * khwait.BOUND_S + 60


def params(case: str, ctxs=("madvise", "khugepaged"), mems=(ANON,), sizes: bool = True, **extra) -> list:
    """pytest params of ``case`` crossed with contexts, memory kinds and THP sizes (anon memory
    in the khugepaged context only: MADV_COLLAPSE collapses to the PMD size only).

    ``extra`` maps a context to additional knobs, e.g. ``khugepaged=(("khugepaged/max_ptes_none", 256),)``.
    """
    out = []
    for ctx in ctxs:
        marks = [pytest.mark.deadline(KH_DEADLINE)] if ctx == "khugepaged" else []
        for mem in mems:
            for size in (thp_sizes() if sizes and mem == ANON and ctx == "khugepaged" else [PMD_SIZE]) or [0]:
                v = Variant(case, ctx, mem, size, tuple(extra.get(ctx, ())))
                out.append(pytest.param(v, id=v.name, marks=marks))
    return out


# ---------------------------------------------------------------------------------------
# memory


# ---------------------------------------------------------------------------------------
# preconditions (probes): skip with a measured reason


def require(v: Variant) -> None:
    """Skip unless the kernel claims the variant's collapse (config, sysfs: probes.py); never
    by trying the collapse the case tests."""
    if not PMD_SIZE:
        pytest.skip("THP not supported (no hpage_pmd_size)")
    if not system.is_root():
        pytest.skip("needs root: PFNs and /proc/kpageflags (folio orders) and THP sysfs")
    if v.size != PMD_SIZE:
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
        check.note(f"file on {scratchfs.fs_type(scratchfs.file_dir())}")
