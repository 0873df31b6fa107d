"""The madvise caller waits for the REMOVE to be read; meanwhile copies fail with EAGAIN.

fs/userfaultfd.c userfaultfd_remove(): the caller raises ctx->mmap_changing, drops mmap_lock,
queues the message and sleeps in userfaultfd_event_wait_completion() (TASK_KILLABLE: state D
in /proc/<tid>/stat) until userfaultfd_ctx_read() hands the message out; only then does
madvise zap/punch the range.  Until then the old mapping is intact: a thread reading or
writing the page takes no fault (e2b TestRemoveThenWriteGated: "the page stays mapped").
mm/userfaultfd.c mfill_atomic(): while mmap_changing is raised UFFDIO_COPY/ZEROPAGE return
-EAGAIN with the result field set to -EAGAIN and nothing copied (uffd-unit-tests
"mmap-changing"; ejc3/fcvm#961 for the encoding).  A handler must read the pending event and
retry: the suite's handler does so even when it resolves faults inline in its serve loop.
"""

from __future__ import annotations

import errno

import pytest

from cases.remove.backings import BACKINGS, Backing, matrix
from cases.remove.support import (
    EVENT_REMOVE,
    HEAD,
    TOPOLOGIES,
    WAIT,
    WCHAN_EVENT,
    check_no_errors,
    check_source,
    drain,
    fault_records,
    header,
    madvise_async,
    make_source,
    read_async,
    served_remove,
    write_async,
)
from lib import check
from lib.check import note
from lib.kernel import abi, libc
from lib.kernel.handler import BEFORE_RESOLVE
from lib.kernel.serve import flush, served
from lib.kernel.tasks import task_state
from lib.kernel.uffd import UffdError, open_for

MARK = b"written while the REMOVE was unread"


def madvise_blocks_until_read(b: Backing, topology: str, pause: bool = True) -> None:
    """Paused handler: madvise sleeps in D, the page stays usable; resume releases it."""
    with served_remove(b, 1, topology) as (region, s):
        addr, ps = region.addr, region.page_size
        h = s.handler
        check.eq(libc.read(addr, HEAD), header(0), "first read (served from the source)")
        if pause:
            h.pause()
        mad = madvise_async(addr, ps, b.discard_advice)
        note(f"{b.punch_name} with the handler paused")
        check.eq(mad.wait_blocked(WCHAN_EVENT), "D", f"{b.punch_name} caller's /proc state")
        check_source(addr, 0, "read while the REMOVE is unread (old page still mapped)")
        write_async(addr + HEAD, MARK).join(5)  # a fault would block: the handler is paused
        check.eq(libc.read(addr + HEAD, len(MARK)), MARK, "the write landed in the old page")
        check.eq(task_state(mad.tid), "D", f"{b.punch_name} caller still waiting")
        if pause:
            h.resume()
        mad.join(5)
        flush(h)
        st = s.stats()
    check_no_errors(st)
    check.eq(len(st.faults), 1, "faults (none while the REMOVE was unread)" + fault_records(st))
    check.eq([(e["event"], e["start"], e["end"]) for e in st.events], [("REMOVE", addr, addr + ps)], "events")


@pytest.mark.parametrize(
    "b,topology",
    matrix(BACKINGS, lambda b, t: f"madvise blocks in D until the REMOVE is read on {b} ({t} handler)", TOPOLOGIES))
def test_madvise_blocks_until_read(b: Backing, topology: str) -> None:
    madvise_blocks_until_read(b, topology)


def copy_eagain_while_unread(b: Backing, read_first: bool = False) -> None:
    """No reader: UFFDIO_COPY fails with EAGAIN (result -EAGAIN) until the REMOVE is read."""
    b.require(EVENT_REMOVE)
    region = b.map(1)
    ps = region.page_size
    buf = libc.mmap(ps, abi.PROT_READ, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    libc.madvise(buf, ps, abi.Madv.POPULATE_READ)  # no hugetlb bounce page needed
    u = open_for(EVENT_REMOVE | b.missing_feature)
    with u:
        u.register(region.addr, region.size, abi.RegisterMode.MISSING)
        mad = madvise_async(region.addr, ps, abi.Madv.DONTNEED)
        mad.wait_blocked(WCHAN_EVENT)
        first = drain(u, 2.0) if read_first else []  # negative control: read it before copying
        if read_first:
            mad.join(5)
        err = None
        try:
            u.copy(region.addr, buf, ps)
        except UffdError as e:
            err = e
        check.eq(err.errno if err else None, errno.EAGAIN, "UFFDIO_COPY errno while the REMOVE is unread")
        check.eq(err.result, -errno.EAGAIN, "uffdio_copy.copy while the REMOVE is unread")
        msgs = first + drain(u, 2.0)
        check.eq([m.event.name for m in msgs], ["REMOVE"], "messages")
        mad.join(5)
        check.eq(u.copy(region.addr, buf, ps), ps, "UFFDIO_COPY once the REMOVE was read")
        u.unregister(region.addr, region.size)
    libc.munmap(buf, ps)


@pytest.mark.parametrize("b", matrix(BACKINGS, lambda b: f"UFFDIO_COPY is EAGAIN while a REMOVE is unread on {b}"))
def test_copy_eagain_while_unread(b: Backing) -> None:
    copy_eagain_while_unread(b)


def inline_handler_retries(b: Backing, topology: str, workers: int = 0) -> None:
    """Inline serve loop parked mid-fault; a REMOVE for another page is queued; released, its
    copy gets EAGAIN, it reads the REMOVE, retries, and both callers complete."""
    b.require(EVENT_REMOVE)
    region = b.map(2)
    src = make_source(region)
    features = EVENT_REMOVE | b.missing_feature
    with served(region, topology, features, source=src, options=b.options(workers=workers)) as s:
        h = s.handler
        tok = h.install_barrier(1, BEFORE_RESOLVE)
        reader = read_async(region.page(1), HEAD)
        h.wait_held(tok, WAIT)
        mad = madvise_async(region.page(0), region.page_size, b.discard_advice)
        mad.wait_blocked(WCHAN_EVENT)  # the only reader of the uffd is parked
        h.release(tok)
        check.eq(reader.join(), header(1), "the retried fault is served from the source")
        mad.join()
        st = s.stats()
    check_no_errors(st)
    check.ge(st.eagain, 1, "UFFDIO_COPY failures with EAGAIN")


@pytest.mark.parametrize(
    "b,topology",
    matrix([b for b in BACKINGS if b.max_pages >= 2],
           lambda b, t: f"EAGAIN copy retried after reading the REMOVE on {b} ({t} handler)", TOPOLOGIES))
def test_inline_handler_retries(b: Backing, topology: str) -> None:
    inline_handler_retries(b, topology)
