"""The REMOVE area's support: the source, callers in threads, and the oracles (its backings: backings.py).

Kernel facts the area relies on (Documentation/admin-guide/mm/userfaultfd.rst, mm/madvise.c,
fs/userfaultfd.c userfaultfd_remove()/userfaultfd_event_wait_completion()):

* With UFFD_FEATURE_EVENT_REMOVE, madvise(MADV_DONTNEED/MADV_REMOVE) on a registered range
  queues UFFD_EVENT_REMOVE with the advised [start, end) and sleeps (TASK_KILLABLE, state D,
  wchan userfaultfd_event_wait_completion) until the message is read; it raises
  ctx->mmap_changing meanwhile, so UFFDIO_COPY/ZEROPAGE fail with EAGAIN.
* Only after the read does madvise zap (DONTNEED) or punch (MADV_REMOVE): the old mapping
  stays usable while the message is unread.

The backings (lib.kernel.memtypes types) and the case matrix are in backings.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lib import check
from lib.kernel import abi, libc, memory, pagemap, system
from lib.kernel.handler import Options, Source, Stats
from lib.kernel.serve import Served, served
from lib.kernel.tasks import Deadline, task_state, task_wchan
from lib.kernel.toucher import Toucher

if TYPE_CHECKING:
    from cases.remove.backings import Backing

PAGE = libc.PAGE_SIZE
MiB, GiB = system.MiB, system.GiB
TOPOLOGIES = ["thread", "process", "scm_rights"]
PROCESS_TOPOLOGIES = ["process", "scm_rights"]

WCHAN_EVENT = "userfaultfd_event_wait_completion"  # madvise/munmap waiting for the read
WCHAN_FAULT = "handle_userfault"  # a thread blocked in a userfault
HEAD = 64  # bytes of the per-page source header
# How long a step of the case's own threads may take to be reached (a thread starting, blocking
# in a wchan, a handler worker reaching its barrier).  Generous: a loaded host (TCG guests
# beside the run) starves threads for seconds, and no kernel guarantee bounds that.
WAIT = 30.0
EVENT_REMOVE = int(abi.Feature.EVENT_REMOVE)  # the feature every case of the area negotiates


# ---------------------------------------------------------------------------------------
# the source: a sparse memfd with a recognisable header at the start of every page


def header(i: int) -> bytes:
    """The first bytes of source page ``i``: 0xC3 (e2b's sentinel) and the page index."""
    return (b"\xc3" + f" kmm-remove source page {i:04d} ".encode()).ljust(HEAD, b"\xc3")


def make_source(region: memory.Region) -> Source:
    """Only the headers are written: a 1 GiB page costs a memfd hole, not a pattern fill."""
    src = Source(region.size)
    for i in range(region.npages):
        libc.write(src.addr + i * region.page_size, header(i))
    return src


@contextmanager
def served_remove(b: Backing, pages: int, topology: str = "thread",
                  options: Options | None = None) -> Iterator[tuple[memory.Region, Served]]:
    """``pages`` pages of backing ``b`` registered for MISSING with EVENT_REMOVE (skips where the
    kernel lacks either), served from :func:`make_source` by a handler in ``topology`` with
    ``b.options(options)``; yields the region and the served handler."""
    b.require(EVENT_REMOVE)
    region = b.map(pages)
    with served(region, topology, EVENT_REMOVE | b.missing_feature, source=make_source(region),
                options=b.options(options)) as s:
        yield region, s


def page_is_zero(addr: int, length: int) -> bool:
    return libc.is_uniform(addr, 0, length)


def check_zero(addr: int, length: int, what: str) -> None:
    """Every byte of [addr, addr+length) is zero (no buffer of that size is built)."""
    if not page_is_zero(addr, length):
        raise AssertionError(f"{what}: expected zeros, first bytes are {libc.read(addr, 16).hex()}")


def check_source(addr: int, i: int, what: str) -> None:
    """The page at ``addr`` starts with the header of source page ``i``."""
    got = libc.read(addr, HEAD)
    if got != header(i):
        raise AssertionError(f"{what}: expected source page {i} header, got {got[:16].hex()}")


def check_no_errors(st: Stats) -> None:
    check.eq(st.errors, [], "handler errors")


# ---------------------------------------------------------------------------------------
# callers in threads (lib.kernel.toucher: memory touched only through lib.kernel.libc,
# docs/ARCHITECTURE.md rule 1; the kernel tid known when the thread is made)


def madvise_async(addr: int, length: int, advice: int) -> Toucher:
    return Toucher.call(lambda: libc.madvise(addr, length, advice), f"madvise({abi.Madv(advice).name})")


def read_async(addr: int, length: int) -> Toucher:
    return Toucher.call(lambda: libc.read(addr, length), f"read@{addr:#x}")


def write_async(addr: int, data: bytes) -> Toucher:
    return Toucher.call(lambda: libc.write(addr, data), f"write@{addr:#x}")


def returns_within(fn: Callable[[], object], seconds: float, what: str) -> object:
    """Run ``fn`` in a thread; it must return within ``seconds`` (the liveness oracle): a call
    still sleeping then (state S/D, its wchan named) fails; one still runnable (R) was starved
    of CPU, which no kernel guarantee bounds: cannot test."""
    a = Toucher.call(fn, what)
    if not a.wait(Deadline(seconds).remaining()):
        if task_state(a.tid) == "R":
            raise check.CannotTest(f"{what} still running after {seconds}s")
        raise AssertionError(f"{what} did not return within {seconds}s (state {task_state(a.tid)} "
                             f"wchan {task_wchan(a.tid)})")
    return a.join(0)


# ---------------------------------------------------------------------------------------
# REMOVE message oracles


def ranges_of(events: list[dict], event: str = "REMOVE") -> list[tuple[int, int]]:
    return [(e["start"], e["end"]) for e in events if e["event"] == event]


def check_ranges_cover(ranges: list[tuple[int, int]], start: int, end: int, what: str) -> None:
    """The messages' ranges are disjoint, inside [start, end) and cover it exactly."""
    if not ranges:
        raise AssertionError(f"{what}: no message, expected [{start:#x}, {end:#x})")
    pos = start
    for s, e in sorted(ranges):
        if s != pos or e <= s:
            raise AssertionError(f"{what}: ranges {fmt_ranges(ranges)} do not tile [{start:#x}, {end:#x}) "
                                 f"(gap or overlap at {pos:#x})")
        pos = e
    if pos != end:
        raise AssertionError(f"{what}: ranges {fmt_ranges(ranges)} end at {pos:#x}, expected {end:#x}")


def fmt_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"[{s:#x}, {e:#x})" for s, e in ranges) or "none"


def drain(u, timeout: float = 0.0) -> list:
    """Every message pending on ``u`` (one message may be several reads: loop until empty)."""
    out = []
    while True:
        if not u.wait(timeout):
            return out
        msgs = u.read_msgs(64)
        if not msgs:
            return out
        out.extend(msgs)
        timeout = 0.0


# ---------------------------------------------------------------------------------------
# kernel-observable facts of a REMOVE race: pagemap, the REMOVE's range, delivered messages
#
# fs/userfaultfd.c: handle_userfault() queues one PAGEFAULT message per fault that finds the
# page missing (a thread woken without its page, e.g. by a signal, faults again and queues
# another), so a fault that was taken is delivered at least once and a page that is present is
# never faulted; userfaultfd_remove() queues one REMOVE per madvise() call and VMA, with the
# advised [start, end).  mm/madvise.c zaps (DONTNEED) or punches (REMOVE) only after the
# message was read, and before madvise returns.

_DELIVERED = re.compile(r"PAGEFAULT@(0x[0-9a-f]+)|([A-Z]+) \[(0x[0-9a-f]+), (0x[0-9a-f]+)\)")


def delivered(st: Stats) -> list[tuple]:
    """The messages the handler read, in read order (from its log): ("PAGEFAULT", address)
    or (event, start, end)."""
    out: list[tuple] = []
    for line in st.log:
        if not line.startswith("read "):
            continue
        for m in _DELIVERED.finditer(line):
            if m.group(1):
                out.append(("PAGEFAULT", int(m.group(1), 16)))
            else:
                out.append((m.group(2), int(m.group(3), 16), int(m.group(4), 16)))
    return out


def fmt_delivered(msgs: list[tuple]) -> str:
    return ", ".join(f"PAGEFAULT@{m[1]:#x}" if m[0] == "PAGEFAULT" else f"{m[0]} [{m[1]:#x}, {m[2]:#x})"
                     for m in msgs) or "nothing"


def fault_records(st: Stats) -> str:
    """The handler's fault records, for failure messages."""
    return "; fault records: " + (", ".join(f"{f['address']:#x} flags={f['flags']:#x} tid={f['ptid']}"
                                            for f in st.faults) or "none")


def faults_on(msgs: list[tuple], page: int, page_size: int) -> list[int]:
    """Indexes in ``msgs`` of the PAGEFAULT messages for the page at ``page``."""
    return [i for i, m in enumerate(msgs) if m[0] == "PAGEFAULT" and page <= m[1] < page + page_size]


def check_one_remove(st: Stats, start: int, end: int, what: str) -> int:
    """Exactly one REMOVE was delivered, with the advised range; returns its index in
    :func:`delivered`."""
    msgs = delivered(st)
    removes = [i for i, m in enumerate(msgs) if m[0] == "REMOVE"]
    if len(removes) != 1 or msgs[removes[0]][1:] != (start, end):
        raise AssertionError(f"{what}: expected one REMOVE [{start:#x}, {end:#x}), delivered "
                             f"{fmt_delivered(msgs)}{fault_records(st)}")
    return removes[0]


def check_faults_before(st: Stats, page: int, page_size: int, at_least: int, what: str) -> None:
    """At least ``at_least`` fault messages for ``page`` were delivered before the REMOVE (one
    per fault that found the page missing; more if a waiter faulted again)."""
    msgs = delivered(st)
    rm = [i for i, m in enumerate(msgs) if m[0] == "REMOVE"]
    before = [i for i in faults_on(msgs, page, page_size) if not rm or i < rm[0]]
    if len(before) < at_least:
        raise AssertionError(f"{what}: expected at least {at_least} PAGEFAULT for {page:#x} before the REMOVE, "
                             f"delivered {fmt_delivered(msgs)}{fault_records(st)}")


def check_no_fault_after(st: Stats, page: int, page_size: int, since: int, what: str) -> None:
    """No fault message for ``page`` among the messages delivered after the first ``since``
    (taken once the handler had filled the page after the REMOVE: a present page never faults,
    so a later fault means the kernel took the page away after madvise returned)."""
    msgs = delivered(st)
    late = [i for i in faults_on(msgs, page, page_size) if i >= since]
    if late:
        raise AssertionError(f"{what}: PAGEFAULT for {page:#x} after the handler filled it post-REMOVE "
                             f"(message {late[0]} of: {fmt_delivered(msgs)}){fault_records(st)}")


def present_pages(addrs: list[int]) -> list[bool]:
    with pagemap.Pagemap() as pm:
        return [pm.entry(a).present for a in addrs]


def check_present(addrs: list[int], expected: bool, what: str, st: Stats | None = None) -> None:
    """/proc/self/pagemap's present bit of each page is ``expected``."""
    got = present_pages(addrs)
    wrong = [f"{a:#x}" for a, p in zip(addrs, got) if p != expected]
    if wrong:
        state = "present" if not expected else "absent"
        raise AssertionError(f"{what}: page(s) {', '.join(wrong)} {state} in pagemap, expected "
                             f"{'present' if expected else 'absent'}{fault_records(st) if st else ''}")
