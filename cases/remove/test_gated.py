"""Ordering of REMOVEs and faults, gated with the handler's pause/resume (no sleeps).

While the handler is paused, events queue in the uffd; the callers' threads are seen blocked
in /proc (madvise in D at userfaultfd_event_wait_completion, a faulting thread at
handle_userfault), then the handler resumes and reads everything in one read(2).

Kernel facts: fs/userfaultfd.c userfaultfd_ctx_read() hands out pending faults before pending
events, whatever order they arrived in, so a batch reads [PAGEFAULT.., REMOVE..] even when the
REMOVE was queued first.  A handler must therefore apply the batch's REMOVEs before serving its
faults (e2b TestWriteThenRemoveGated, TestFaultedShortCircuitOrdering), or it serves stale data
into a page that is being discarded.  A page whose REMOVE is unread stays mapped: a write to it
takes no fault and is discarded with the page (e2b TestRemoveThenWriteGated).
"""

from __future__ import annotations

import pytest

from cases.remove.backings import BACKINGS, Backing, matrix
from cases.remove.support import (
    HEAD,
    TOPOLOGIES,
    WCHAN_EVENT,
    WCHAN_FAULT,
    check_no_errors,
    check_zero,
    fault_records,
    header,
    madvise_async,
    read_async,
    served_remove,
    write_async,
)
from lib import check
from lib.kernel import libc
from lib.kernel.handler import Options
from lib.kernel.serve import flush

MARK = b"gated write"


def check_batch_order(log: list[str], fault_addr: int, remove: tuple[int, int]) -> None:
    """One read(2) returned the fault and the REMOVE, fault first; the REMOVE was applied
    before the fault was dispatched."""
    fault = f"PAGEFAULT@{fault_addr:#x} "
    rm = f"REMOVE [{remove[0]:#x}, {remove[1]:#x})"
    reads = [i for i, line in enumerate(log) if line.startswith("read ") and fault in line and rm in line]
    if not reads:
        raise AssertionError(f"no single read returned both {fault.strip()} and {rm}: {log}")
    r = reads[0]
    check.true(log[r].index(fault) < log[r].index(rm), f"the read lists the fault before the REMOVE: {log[r]}")
    applied = [i for i, line in enumerate(log) if i > r and line == f"applied {rm}"]
    dispatched = [i for i, line in enumerate(log) if i > r and line.startswith(f"dispatched {fault}")]
    if not applied or not dispatched:
        raise AssertionError(f"REMOVE applied / fault dispatched not logged after the read: {log[r:]}")
    check.true(applied[0] < dispatched[0], f"REMOVE applied before the batch's fault: {log[r:]}")


def remove_then_write(b: Backing, topology: str, options: Options | None = None) -> None:
    """REMOVE of a served page queued, then a write to it: no fault, the write is discarded."""
    with served_remove(b, 1, topology, options) as (region, s):
        addr, ps = region.addr, region.page_size
        h = s.handler
        libc.read(addr, HEAD)
        h.pause()
        mad = madvise_async(addr, ps, b.discard_advice)
        mad.wait_blocked(WCHAN_EVENT)
        write_async(addr, MARK).join(5)
        h.resume()
        mad.join()
        check.eq(read_async(addr, len(MARK)).join(), bytes(len(MARK)), "the gated write went with the page")
        check_zero(addr, ps, "page after the REMOVE")
        flush(h)
        st = s.stats()
    check_no_errors(st)
    check.eq(len(st.faults), 2,
             "MISSING faults (first read, access after the REMOVE; none for the write)" + fault_records(st))


def write_then_remove(b: Backing, topology: str, options: Options | None = None) -> None:
    """Write fault on page 1 queued, then a REMOVE of page 0: one batch; no fault lost."""
    with served_remove(b, 2, topology, options) as (region, s):
        p0, p1, ps = region.page(0), region.page(1), region.page_size
        h = s.handler
        libc.read(p0, HEAD)
        h.pause()
        writer = write_async(p1, MARK)
        writer.wait_blocked(WCHAN_FAULT)
        mad = madvise_async(p0, ps, b.discard_advice)
        mad.wait_blocked(WCHAN_EVENT)
        h.resume()
        writer.join()
        mad.join()
        check.eq(libc.read(p1, HEAD), MARK + header(1)[len(MARK):], "page 1: source page + the write")
        read_async(p0, HEAD).join()
        check_zero(p0, ps, "page 0 after the REMOVE")
        flush(h)
        st = s.stats()
    check_no_errors(st)
    check_batch_order(st.log, p1, (p0, p0 + ps))


def remove_then_fault(b: Backing, topology: str, options: Options | None = None) -> None:
    """REMOVE of an unpopulated page queued first, then a read fault on it: one batch, read
    fault first; the REMOVE is applied first and the fault served with zeros."""
    with served_remove(b, 1, topology, options) as (region, s):
        addr, ps = region.addr, region.page_size
        h = s.handler
        h.pause()
        mad = madvise_async(addr, ps, b.discard_advice)
        mad.wait_blocked(WCHAN_EVENT)
        reader = read_async(addr, HEAD)
        reader.wait_blocked(WCHAN_FAULT)
        h.resume()
        got = reader.join()
        mad.join()
        check.eq(got, bytes(HEAD), "the fault queued behind the REMOVE reads zeros")
        check_zero(addr, ps, "page after the batch")
        flush(h)
        st = s.stats()
    check_no_errors(st)
    check_batch_order(st.log, addr, (addr, addr + ps))


def _id(what: str):
    return lambda b, t: f"{what} on {b} ({t} handler)"


@pytest.mark.parametrize("b,topology", matrix(BACKINGS, _id("gated: REMOVE then write the same page"), TOPOLOGIES))
def test_remove_then_write(b: Backing, topology: str) -> None:
    remove_then_write(b, topology)


@pytest.mark.parametrize(
    "b,topology",
    matrix([b for b in BACKINGS if b.max_pages >= 2], _id("gated: write one page then REMOVE another"), TOPOLOGIES))
def test_write_then_remove(b: Backing, topology: str) -> None:
    write_then_remove(b, topology)


@pytest.mark.parametrize("b,topology", matrix(BACKINGS, _id("gated: REMOVE then fault the same page"), TOPOLOGIES))
def test_remove_then_fault(b: Backing, topology: str) -> None:
    remove_then_fault(b, topology)
