"""mmap-changing, as uffd-unit-tests (shmem).

While a non-cooperative event is queued but not yet read, the uffd context is "mmap changing"
and every resolving ioctl refuses with EAGAIN, writing -EAGAIN into its result field
(fs/userfaultfd.c: ctx->mmap_changing; Documentation/admin-guide/mm/userfaultfd.rst, "the
monitor ... gets -EAGAIN ... and must read the events first").  A helper thread MADV_REMOVEs
one page of the registered area; it then waits, in uninterruptible (killable) sleep, state D,
until the REMOVE message is read.  In that window COPY, ZEROPAGE, MOVE, POISON and CONTINUE each
fail with EAGAIN and result -EAGAIN (copy, zeropage, move, updated, mapped).  Reading the event
lets the thread finish.
"""

from __future__ import annotations

import errno
import threading

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi, libc, memory
from lib.kernel.memtypes import MemType
from lib.kernel.tasks import wait_task_state, wait_until
from lib.kernel.uffd import Userfaultfd, open_for

FEATURES = (abi.Feature.EVENT_REMOVE | abi.Feature.MOVE | abi.Feature.POISON | abi.Feature.MINOR_SHMEM
            | abi.Feature.MISSING_SHMEM)


def check_eagain_ops(u: Userfaultfd, a: support.Area, src: int) -> None:
    """Each resolving ioctl on page 1 must fail with EAGAIN and -EAGAIN in its result field."""
    ps = a.page_size
    page = a.page(1)
    ops = {
        "UFFDIO_COPY": lambda: u.copy(page, src, ps),
        "UFFDIO_ZEROPAGE": lambda: u.zeropage(page, ps),
        "UFFDIO_MOVE": lambda: u.move(page, src, ps),
        "UFFDIO_POISON": lambda: u.poison(page, ps),
        "UFFDIO_CONTINUE": lambda: u.cont(page, ps),
    }
    for name, op in ops.items():
        with check.raises_errno(errno.EAGAIN, f"{name} while a REMOVE event is unread") as c:
            op()
        check.eq(c[0].result, -errno.EAGAIN, f"{name} result field")


def run_mmap_changing(check_fn=check_eagain_ops) -> None:
    mt = MemType("shmem")
    with support.make_area(mt, 4, counters=False, alias=False) as a, open_for(FEATURES) as u, \
            memory.anon(a.page_size) as src:
        libc.fill(src.addr, 0x11, a.page_size)
        u.register(a.dst.addr, a.size)
        support.copy_page(u, a.page(0), src.addr, a.page_size)
        tid: list[int] = []
        err: list[BaseException] = []

        def remove() -> None:
            tid.append(threading.get_native_id())
            try:
                libc.madvise(a.page(0), a.page_size, abi.Madv.REMOVE)
            except BaseException as e:
                err.append(e)

        t = threading.Thread(target=remove, daemon=True)
        t.start()
        try:
            wait_until(lambda: tid, 5, "the helper thread's id")
            wait_task_state(tid[0], "D", 10)
            check_fn(u, a, src.addr)
        finally:
            m = u.read_msg(10)
            t.join(10)
        check.eq(m.event, abi.Event.REMOVE, "the queued event")
        check.eq((m.start, m.end), (a.page(0), a.page(1)), "REMOVE range")
        check.false(t.is_alive(), "the MADV_REMOVE thread finished after the event was read")
        check.eq(err, [], "MADV_REMOVE errors")
        support.copy_page(u, a.page(1), src.addr, a.page_size)  # mmap_changing is over


@pytest.mark.tap("mmap-changing on shmem")
def test_mmap_changing() -> None:
    support.need_type(MemType("shmem"), FEATURES)
    run_mmap_changing()
