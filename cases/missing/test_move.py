"""move, move-pmd and move-pmd-split, as uffd-unit-tests (UFFDIO_MOVE, since 6.8; anon only).

src holds the counters and is MADV_DONTFORK (pages mapped once); dst is registered MISSING.
The handler requires a pure read fault (no WP/MINOR/WRITE flag) and answers with UFFDIO_MOVE
of one page (move) or one PMD-sized chunk (move-pmd, move-pmd-split) from src to dst, mode
ALLOW_SRC_HOLES, and the result must equal the length (EEXIST wakes instead).  For every chunk:
the src counters are right before the fault, the dst counters after it, and src then reads 0
(the pages moved, they were not copied).  The handler counts exactly one missing fault per
chunk.  move: src MADV_NOHUGEPAGE.  move-pmd: src and dst MADV_HUGEPAGE (a whole PMD moves).
move-pmd-split: src MADV_HUGEPAGE, dst MADV_NOHUGEPAGE (the src PMD is split while moving).
Both areas are PMD-aligned here, so no step is lost to alignment as upstream may lose one.
"""

from __future__ import annotations

import errno

import pytest

from cases.missing import support
from lib import check
from lib.kernel import abi, libc, memory, needs, system
from lib.kernel.uffd import Msg, UffdError, Userfaultfd, open_for

PAGE_SIZE = memory.PAGE_SIZE
NPAGES = 2048  # 8 MiB: four PMDs


def move_handler(u: Userfaultfd, src: int, dst: int, chunk: int, stats: support.FaultStats):
    def handle(m: Msg) -> None:
        if m.event != abi.Event.PAGEFAULT:
            raise AssertionError(f"unexpected event {m}")
        if m.flags & (abi.PagefaultFlag.WP | abi.PagefaultFlag.MINOR | abi.PagefaultFlag.WRITE):
            raise AssertionError(f"unexpected fault type {m.flags:#x}")
        off = (m.address - dst) & ~(chunk - 1)
        try:
            moved = u.move(dst + off, src + off, chunk, abi.MoveMode.ALLOW_SRC_HOLES)
        except UffdError as e:
            if e.errno != errno.EEXIST:
                raise
            u.wake(dst + off, chunk)
            return
        check.eq(moved, chunk, "uffdio_move.move")
        stats.missing += 1

    return handle


def run_move(chunk: int, src_advice: int, dst_advice: int | None, make_handler=move_handler) -> None:
    align = max(chunk, system.pmd_size() or PAGE_SIZE)
    size = NPAGES * PAGE_SIZE
    with memory.aligned_anon(size, align) as src, memory.aligned_anon(size, align) as dst, \
            open_for(abi.Feature.MOVE) as u:
        libc.madvise(src.addr, size, src_advice)
        if dst_advice is not None:
            libc.madvise(dst.addr, size, dst_advice)
        libc.madvise(src.addr, size, abi.Madv.DONTFORK)
        for nr in range(NPAGES):
            support.write_count(src.addr + nr * PAGE_SIZE + support.COUNT_OFF, nr + 1)
        u.register(dst.addr, size)
        stats = support.FaultStats()
        step = chunk // PAGE_SIZE
        with support.PollThread(u, make_handler(u, src.addr, dst.addr, chunk, stats), (dst.addr, size), stats) as pt:
            for nr in range(0, NPAGES, step):
                for i in range(nr, nr + step):
                    check.eq(support.read_count(src.addr + i * PAGE_SIZE + support.COUNT_OFF), i + 1,
                             f"nr {i} source before")
                for i in range(nr, nr + step):
                    check.eq(support.read_count(dst.addr + i * PAGE_SIZE + support.COUNT_OFF), i + 1,
                             f"nr {i} moved content")
                for i in range(nr, nr + step):
                    check.eq(support.read_count(src.addr + i * PAGE_SIZE + support.COUNT_OFF), 0,
                             f"nr {i} source after the move")
            pt.stop()
        check.eq(stats.errors, [], "handler errors")
        check.eq((stats.missing, stats.minor), (NPAGES // step, 0), "missing and minor faults")


@pytest.mark.tap("move on anon")
def test_move() -> None:
    needs.uffd_features(abi.Feature.MOVE)
    run_move(PAGE_SIZE, abi.Madv.NOHUGEPAGE, None)


@pytest.mark.tap("move-pmd on anon")
def test_move_pmd() -> None:
    needs.uffd_features(abi.Feature.MOVE)
    needs.thp()
    run_move(system.pmd_size(), abi.Madv.HUGEPAGE, abi.Madv.HUGEPAGE)


@pytest.mark.tap("move-pmd-split on anon")
def test_move_pmd_split() -> None:
    needs.uffd_features(abi.Feature.MOVE)
    needs.thp()
    run_move(system.pmd_size(), abi.Madv.HUGEPAGE, abi.Madv.NOHUGEPAGE)
