"""Which collapses this kernel claims to do, decided from its config and sysfs, never by trying
the collapse under test (a kernel that claims a collapse and fails it must fail the case).

Each decision is a pure function of the facts it reads (a kernel config dict, a path-exists
callable), so tests/test_thp_collapse_probes.py feeds it configs and sysfs trees that must
make it say yes and no.

Facts used (mm/khugepaged.c, mm/huge_memory.c, Documentation/admin-guide/mm/transhuge.rst):

* Regular files (not shmem).  Up to 6.18 a regular file is collapsed only through
  CONFIG_READ_ONLY_THP_FOR_FS (5.4, "mm,thp: add read-only THP support for (non-shmem) FS";
  MADV_COLLAPSE gained file support in 6.1, "mm/madvise: add file and shmem support to
  MADV_COLLAPSE"): file_thp_enabled() in include/linux/huge_mm.h accepts a regular file only
  with the option set and only while nobody has it open for writing.  The linux-mm series
  that removes the option ("mm: remove READ_ONLY_THP_FOR_FS Kconfig option", with
  "mm/khugepaged: enable clean pagecache folio collapse for writable files") makes every
  regular file on a filesystem with large folios collapsible, writable ones included; a
  kernel built from it has no ``CONFIG_READ_ONLY_THP_FOR_FS`` line in its config at all
  (neither ``=y`` nor ``is not set``).
* mTHP sizes.  MADV_COLLAPSE collapses to the PMD size only: madvise_collapse() rounds the
  range to HPAGE_PMD_SIZE in every kernel up to 6.18, and the linux-mm mTHP series leaves
  MADV_COLLAPSE (and file memory) at the PMD order, so the suite has no MADV_COLLAPSE case
  for an mTHP size.  khugepaged collapses to mTHP sizes only with Nico
  Pache's linux-mm series "mm/khugepaged: introduce mTHP collapse support" (not in any
  release up to 6.18); the same series adds the per-size counters
  ``hugepages-<size>kB/stats/collapse_exceed_{none,swap,shared}_pte`` ("mm/khugepaged: add
  per-order mTHP collapse failure statistics"), which is how a kernel says it has it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

RO_THP = "CONFIG_READ_ONLY_THP_FOR_FS"
CONFIG_THP = "CONFIG_TRANSPARENT_HUGEPAGE"
# the read-only open (khugepaged.c's "file" ops) and the read-write open of a regular file
FILE, FILE_RW = "file", "file-rw"
MTHP_COLLAPSE_STAT = "collapse_exceed_none_pte"
MTHP_SERIES = "linux-mm 'mm/khugepaged: introduce mTHP collapse support' (Nico Pache; in no release up to 6.18)"
WRITABLE_SERIES = ("linux-mm 'mm: remove READ_ONLY_THP_FOR_FS Kconfig option' with 'mm/khugepaged: enable clean "
                   "pagecache folio collapse for writable files' (in no release up to 6.18)")


def file_collapse(mem: str, cfg: Mapping[str, str]) -> tuple[bool, str]:
    """(claimed, why): does a kernel with config ``cfg`` collapse a regular file opened as
    ``mem`` (FILE: read-only; FILE_RW: read-write, mapped shared)?"""
    if not cfg:
        return False, (f"no kernel config (/proc/config.gz, /boot/config-<release>): cannot tell whether this kernel "
                       f"collapses regular files ({RO_THP})")
    if cfg.get(CONFIG_THP) not in ("y", "m"):
        return False, f"{CONFIG_THP} is not set"
    ro = cfg.get(RO_THP)
    if ro is None:
        return True, f"the kernel config has no {RO_THP} option: {WRITABLE_SERIES} collapses regular files"
    if ro not in ("y", "m"):
        return False, (f"{RO_THP} is not set: a regular file is collapsed only through it on this kernel "
                       f"(file_thp_enabled(); the option is removed by {WRITABLE_SERIES})")
    if mem == FILE_RW:
        return False, (f"{RO_THP}=y collapses only files nobody has open for writing (file_thp_enabled()); a "
                       f"writable file needs {WRITABLE_SERIES}")
    return True, f"{RO_THP}=y collapses regular files opened read-only"


def mthp_khugepaged(size_kb: int, thp_dir: str, exists: Callable[[str], bool] = os.path.exists) -> tuple[bool, str]:
    """(claimed, why): does khugepaged collapse anon memory to ``size_kb`` kB (an mTHP size)?"""
    stat = f"{thp_dir}/hugepages-{size_kb}kB/stats/{MTHP_COLLAPSE_STAT}"
    if exists(stat):
        return True, f"{stat} exists: khugepaged collapses to mTHP sizes ({MTHP_SERIES})"
    return False, (f"khugepaged collapses to the PMD size only on this kernel: no {stat} (mTHP collapse comes with "
                   f"{MTHP_SERIES}, which adds that counter)")
