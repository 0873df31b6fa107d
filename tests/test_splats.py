"""lib.runner.splats: the one table of kernel report lines, and its three readers.

Every pattern matches a real report line (its ``example``: the formats of kernel/panic.c,
lib/bug.c, mm/page_alloc.c bad_page(), mm/memory.c print_bad_pte(), kernel/hung_task.c,
Documentation/RCU/stallwarn.rst, lib/ubsan.c, lib/list_debug.c; a few come from the recorded
consoles in tests/data/console/), and benign kernel lines are not matched (negative control:
the matcher can say "no").  The kernel log watch (lib.runner.kmsg), the console watchdog
(lib.runner.vm_console) and the live console echo (lib.runner.vmrun) all read the same table.
"""

from __future__ import annotations

import pytest

from lib.runner import kmsg, splats, vm_console
from lib.runner.vm_console import Verdict, classify_kernel_line

#: Lines the kernel prints that are not reports (some next to one, some naming the words).
BENIGN = [
    "------------[ cut here ]------------",
    "sysrq: Show Memory",
    "Kernel command line: console=ttyS0 panic=-1 oops=panic",
    "kfence: initialized - using 2097152 bytes for 255 objects at 0x(____ptrval____)-0x(____ptrval____)",
    "zram0: detected capacity change from 0 to 524288",
    "Adding 262140k swap on /dev/zram0.  Priority:-2 extents:1 across:262140k SS",
    "audit: type=1400 audit(1.2:3): comm=\"WARNING: BUG: Oops\"",  # the words, not at the start
    "RIP: 0010:__split_huge_page_tail+0x1b0/0x1c0",
    "Call Trace:",
    "---[ end trace 0000000000000000 ]---",
    "khugepaged: a THP was collapsed",
    "BUGS: none",  # "BUG" without the colon and space
]

#: Real report lines from the recorded consoles (tests/data/console/), timestamps removed.
RECORDED = [
    ("BUG: Bad page state in process python3  pfn:1a2b3", splats.Kind.BUG),
    ("BUG: kernel NULL pointer dereference, address: 0000000000000008", splats.Kind.BUG),
    ("Oops: 0000 [#1] PREEMPT SMP NOPTI", splats.Kind.OOPS),
    ("Kernel panic - not syncing: sysrq triggered crash", splats.Kind.PANIC),
    ("WARNING: CPU: 1 PID: 143 at mm/huge_memory.c:2465 __split_huge_page_tail+0x1b0/0x1c0", splats.Kind.WARNING),
]


@pytest.mark.parametrize("p", splats.TABLE, ids=[p.regex.pattern for p in splats.TABLE])
def test_each_pattern_matches_a_real_report_line(p: splats.Pattern) -> None:
    assert p.regex.match(p.example), p.example
    assert splats.classify(p.example) is p.kind
    # the console watchdog reads the same line after a printk timestamp, as the same kind
    assert classify_kernel_line(f"[   14.482998] {p.example}") is Verdict(p.kind.value)


@pytest.mark.parametrize(("line", "kind"), RECORDED, ids=[line[:40] for line, _ in RECORDED])
def test_recorded_console_lines(line: str, kind: splats.Kind) -> None:
    assert splats.classify(line) is kind


@pytest.mark.parametrize("line", BENIGN)
def test_benign_lines_are_not_splats(line: str) -> None:
    assert splats.classify(line) is None
    assert not splats.is_splat(line)
    assert classify_kernel_line(f"[    5.100000] {line}") is None


def test_every_pattern_is_anchored() -> None:
    """A report's words in the middle of another message (an audit record, a comm) are not a report."""
    for p in splats.TABLE:
        assert splats.classify("audit: comm=" + p.example) is None, p.regex.pattern


def test_kmsg_watch_reads_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel log watch's splats are the table's (no list of its own)."""
    w = kmsg.KmsgWatch(path="/nonexistent/kmsg")
    lines = [p.example for p in splats.TABLE] + BENIGN
    monkeypatch.setattr(w, "read", lambda: list(lines))
    msgs, found = w.splats()
    assert msgs == lines
    assert found == [p.example for p in splats.TABLE]


def test_console_kinds_are_console_verdicts() -> None:
    """Each splat kind is one of the console watchdog's verdicts (same value)."""
    for kind in splats.Kind:
        assert Verdict(kind.value) in vm_console.SEVERITY
