"""The one table of kernel splats: the report lines by which the kernel says something went wrong.

Read by the kernel log watch of a run on this kernel (lib.runner.kmsg: a splat logged during a
case fails it), by the guest console watchdog (lib.runner.vm_console: a panic, Oops or BUG
ends a ``--kernel`` run) and by the live console echo of lib.runner.vmrun.

Every pattern matches the start of one log message (a /dev/kmsg record's text, or a console
line with its printk timestamp removed), as the kernel prints its reports:

- ``Kernel panic - not syncing``: kernel/panic.c panic();
- ``Oops: ...``, ``Internal error: Oops`` (arm), ``general protection fault``: arch die() paths
  (arch/x86/kernel/dumpstack.c __die(), arch/x86/kernel/traps.c);
- ``BUG: ...`` (lib/bug.c, mm/page_alloc.c bad_page() "BUG: Bad page state", KASAN's and KFENCE's
  reports, the soft-lockup watchdog's ``watchdog: BUG: soft lockup``), ``kernel BUG at``
  (BUG()), ``Bad page map`` (mm/memory.c print_bad_pte()), the hung-task detector's
  ``INFO: task ... blocked for more than`` (kernel/hung_task.c), RCU stall warnings
  (Documentation/RCU/stallwarn.rst);
- ``WARNING: ...`` (kernel/panic.c __warn()), and reports that do not stop the kernel:
  ``UBSAN: ...`` (lib/ubsan.c), ``KASAN: ...`` (the line after a KASAN general protection
  fault), ``list_add corruption``/``list_del corruption`` (lib/list_debug.c).

``Kind`` orders them for the console watchdog (most severe first); the values are the ones
vm_console.Verdict uses for them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Kind(enum.StrEnum):
    PANIC = "panic"
    OOPS = "oops"
    BUG = "bug"
    WARNING = "warning"


@dataclass(frozen=True)
class Pattern:
    kind: Kind
    regex: re.Pattern[str]
    example: str  #: a real report line it matches (tests/test_splats.py checks each)


def _p(kind: Kind, regex: str, example: str) -> Pattern:
    return Pattern(kind, re.compile("^(?:" + regex + ")"), example)


#: Kernel report lines, most severe kind first.
TABLE: tuple[Pattern, ...] = (
    _p(Kind.PANIC, r"Kernel panic - not syncing",
       "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"),
    _p(Kind.OOPS, r"Oops(?::| -)", "Oops: 0002 [#1] PREEMPT SMP NOPTI"),
    _p(Kind.OOPS, r"Internal error: Oops", "Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP"),
    _p(Kind.OOPS, r"general protection fault", "general protection fault, probably for non-canonical address "
       "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI"),
    _p(Kind.BUG, r"(?:watchdog: )?BUG: ", "BUG: Bad page state in process python3  pfn:10a2c3"),
    _p(Kind.BUG, r"kernel BUG at ", "kernel BUG at mm/rmap.c:1234!"),
    _p(Kind.BUG, r"Bad page (?:state|map)", "Bad page map in process python3  pte:8000000107a4b067 pmd:10a2c3067"),
    _p(Kind.BUG, r"INFO: task \S.* blocked for more than", "INFO: task python3:200 blocked for more than 120 seconds."),
    _p(Kind.BUG, r"(?:rcu: )?INFO: \S+ (?:self-)?detected stall", "rcu: INFO: rcu_preempt self-detected stall on CPU"),
    _p(Kind.WARNING, r"WARNING: ", "WARNING: CPU: 0 PID: 200 at mm/userfaultfd.c:100 mfill_atomic+0x1/0x2"),
    _p(Kind.WARNING, r"UBSAN: ", "UBSAN: array-index-out-of-bounds in mm/memory.c:100:20"),
    _p(Kind.WARNING, r"KASAN: ", "KASAN: null-ptr-deref in range [0x0000000000000008-0x000000000000000f]"),
    _p(Kind.WARNING, r"list_(?:add|del) corruption", "list_del corruption, ffff888100a2c3d8->next is LIST_POISON1 "
       "(dead000000000100)"),
)


def classify(message: str) -> Kind | None:
    """The kind of the first table entry matching the start of ``message``, or None."""
    for p in TABLE:
        if p.regex.match(message):
            return p.kind
    return None


def is_splat(message: str) -> bool:
    return classify(message) is not None
