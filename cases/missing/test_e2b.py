"""The e2b-dev/infra userfaultfd matrix (e2b-dev/infra's orchestrator userfaultfd tests): the handler in a separate
process that received the uffd over a unix socket (SCM_RIGHTS), as a VMM's memory server does.

Shapes (TestMissing, TestMissingWrite): a 4 KiB anon area of 32 pages touched at page 0, 15 or
31, or read twice at page 0; a MAP_HUGETLB area (``hugetlb-anon``, e2b's "hugepage") of 8 huge
pages touched at page 0, 3 or 7, or twice at page 0 (e2b uses 32 pages for that one; 8 here,
the suite's 2 MiB pool holds 16).
Reads fault with MADV_POPULATE_READ and compare the page with the source; writes fault with
MADV_POPULATE_WRITE and store a tag naming the page (e2b copies the source page in, which
leaves nothing to check); the second op of "read after read/write" reads.  Checked: the
handler installed exactly the touched pages (served faults == touched pages, state clean for
read-only pages and dirty for written ones), every page read and, after the ops, every touched
page holds the source with the tag where written, and pagemap shows exactly the touched pages
present.

Loads (TestSerialMissing..., 4 KiB anon, 2 pages, page 0), e2b's counts: 1,000,000 serial or
parallel reads or writes; after one prefaulting op, 10,000 parallel reads or 1,000,000 parallel
writes.  Each read compares the whole page with the source.  Each writer stores its own tags
in its slice of the page (cases.missing.write_load): every round of its writes must hold, and after the
load the page must hold exactly the writers' last tags and the handler's source bytes
elsewhere (a write lost, or a page re-installed over written data, shows).  Afterwards also:
the handler has no errors and only page 0 installed, every fault message was for page 0.
"""

from __future__ import annotations

import threading

import pytest

from cases.missing import support, write_load
from lib import check
from lib.kernel import abi, handler, libc, memory, needs
from lib.kernel.memtypes import ANON as ANON_KIND
from lib.kernel.memtypes import HUGETLB_ANON, MemType, mem_types
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import served
from lib.kernel.tasks import wait_until

# e2b's "standard 4k page" is anon, its "hugepage" MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB: hugetlb-anon
# (lib.kernel.memtypes), at every hugetlb size; the case names keep e2b's words
HUGE = mem_types((HUGETLB_ANON,))
ANON = MemType(ANON_KIND)


def _shapes(mt: MemType, write: bool) -> list[tuple[str, int, list[tuple[str, int]]]]:
    op = "w" if write else "r"
    n, mid = (32, 15) if not mt.hugetlb else (8, 3)
    label = "standard 4k page" if not mt.hugetlb else "hugepage" + mt.name.removeprefix(mt.kind)
    last = "read after write" if write else "read after read"
    return [
        (f"{label}, operation at start", n, [(op, 0)]),
        (f"{label}, operation at middle", n, [(op, mid)]),
        (f"{label}, operation at last page", n, [(op, n - 1)]),
        (f"{label}, {last}", n, [(op, 0), ("r", 0)]),
    ]


CASES = [(test, mt, *shape) for test, write in (("TestMissing", False), ("TestMissingWrite", True))
         for mt in [ANON, *HUGE] for shape in _shapes(mt, write)]


def map_region(mt: MemType, npages: int) -> memory.Region:
    return mt.map(npages)


WRITE_AT = 64  # a matrix write stores its tag here; the rest of the page keeps the source


def write_tag(nr: int) -> bytes:
    return write_load.tag(0x0F, nr).to_bytes(8, "little")


def expected_content(src: handler.Source, nr: int, ps: int, written: bool) -> bytes:
    """Page ``nr`` as the ops so far must have left it: the source, plus the write's tag."""
    page = bytearray(src.page(nr, ps))
    if written:
        page[WRITE_AT:WRITE_AT + 8] = write_tag(nr)
    return bytes(page)


def do_op(op: str, addr: int, src: handler.Source, nr: int, ps: int, written: set[int]) -> bool:
    """One e2b op on page ``nr``: a read faults with MADV_POPULATE_READ and must see the page
    as installed and written so far; a write faults with MADV_POPULATE_WRITE and stores the
    page's tag (so a write that did not land shows in the later content checks)."""
    if op == "r":
        libc.madvise(addr, ps, abi.Madv.POPULATE_READ)
        return libc.compare(addr, expected_content(src, nr, ps, nr in written))
    libc.madvise(addr, ps, abi.Madv.POPULATE_WRITE)
    libc.write(addr + WRITE_AT, write_tag(nr))
    written.add(nr)
    return True


def settled(s) -> handler.Stats:
    """The handler's stats once every fault message it read is accounted for.

    FaultServer records a page's state just after the resolving ioctl, which has already woken
    the faulting thread, so a snapshot taken right after the access can precede the record.
    """
    def done():
        st = s.stats()
        return st if st.missing + st.wp + st.minor + len(st.errors) >= len(st.faults) else None

    return wait_until(done, 10, "the handler to account for every fault")


def check_matrix(st: handler.Stats, ops: list[tuple[str, int]], present: list[bool], ps: int, base: int) -> None:
    touched = sorted({nr for _, nr in ops})
    first = {}
    for op, nr in ops:
        first.setdefault(nr, op)
    check.eq(st.errors, [], "handler errors")
    check.eq(sorted(st.states), touched, "pages the handler installed")
    want = {nr: handler.DIRTY if first[nr] == "w" else handler.CLEAN for nr in touched}
    check.eq(st.states, want, f"handler page states (fault messages {st.faults})")
    check.eq(sorted((f["address"] - base) // ps for f in st.faults), touched, "fault messages per page")
    check.eq([i for i, p in enumerate(present) if p], touched, "pagemap present pages")


def run_matrix(mt: MemType, npages: int, ops: list[tuple[str, int]], options: handler.Options | None = None,
               do=do_op) -> None:
    """``do``: the op function (a hook for the negative controls)."""
    with map_region(mt, npages) as r:
        src = handler.Source(r.size, pattern=0xE2B)
        ps = r.page_size
        with served(r, "scm_rights", mt.missing_feature, source=src, options=options) as s:
            written: set[int] = set()
            wrong = [nr for op, nr in ops if not do(op, r.page(nr), src, nr, ps, written)]
            for _, nr in ops:
                if not libc.compare(r.page(nr), expected_content(src, nr, ps, nr in written)):
                    wrong.append(nr)
            st = settled(s)
        with Pagemap() as pm:
            present = [e.present for e in pm.entries(r.addr, npages, ps)]
        check.eq(wrong, [], "pages whose content differs from the source (with the tag where written)")
        check_matrix(st, ops, present, ps, r.addr)
        src.close()


@pytest.mark.parametrize("test,mt,shape,npages,ops", CASES, ids=[f"{c[0]}/{c[2]}" for c in CASES])
def test_e2b_matrix(test: str, mt: MemType, shape: str, npages: int, ops: list[tuple[str, int]]) -> None:
    support.need_type(mt, npages=npages)
    needs.kernel_faults("MADV_POPULATE_READ/WRITE fault the pages in through GUP")
    run_matrix(mt, npages, ops)


# ---------------------------------------------------------------------------------------
# loads

THREADS = 4
LOADS = [
    ("TestSerialMissing", "r", False, 1_000_000, False),
    ("TestParallelMissing", "r", True, 1_000_000, False),
    ("TestParallelMissingWithPrefault", "r", True, 10_000, True),
    ("TestSerialMissingWrite", "w", False, 1_000_000, False),
    ("TestParallelMissingWrite", "w", True, 1_000_000, False),
    ("TestParallelMissingWriteWithPrefault", "w", True, 1_000_000, True),
]


def read_ops(addr: int, src: int, ps: int, n: int) -> int:
    """``n`` reads of one page in a tight loop; returns how many saw data other than the source."""
    cmp = libc._memcmp
    return sum(1 for _ in range(n) if cmp(addr, src, ps) != 0)


def run_parallel(fns: list) -> None:
    """Run ``fns`` in threads released together; every thread must finish."""
    go = threading.Barrier(len(fns))

    def worker(fn) -> None:
        go.wait(10)
        fn()

    ts = [threading.Thread(target=worker, args=(fn,), daemon=True) for fn in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    check.false(any(t.is_alive() for t in ts), "load threads finished")


def run_load(op: str, parallel: bool, n: int, prefault: bool, options: handler.Options | None = None,
             writer: type[write_load.Writer] = write_load.Writer) -> None:
    """The load on page 0 of a 2-page area served from another process.

    Reads: each compares the whole page with the source.  Writes (cases.missing.write_load): each writer
    stores its own tags in its slice of the page and checks every round of them held; after
    the load the page must hold exactly the writers' last tags in their slices and the
    handler's source bytes elsewhere.  ``writer`` is a hook for the negative controls."""
    ps = memory.PAGE_SIZE
    per = n // THREADS if parallel else n
    pre, writers = write_load.load_writers(THREADS if parallel else 1, per, prefault, writer)
    with memory.anon(2 * ps) as r:
        src = handler.Source(r.size, pattern=0x10AD)
        source = libc.read(src.addr, ps)
        with served(r, "scm_rights", 0, source=src, options=options) as s:
            bad = 0
            if op == "r":
                if prefault:
                    bad += read_ops(r.addr, src.addr, ps, 1)
                if parallel:
                    results = [0] * THREADS

                    def reader(i: int):
                        return lambda: results.__setitem__(i, read_ops(r.addr, src.addr, ps, per))

                    run_parallel([reader(i) for i in range(THREADS)])
                    bad += sum(results)
                else:
                    bad += read_ops(r.addr, src.addr, ps, n)
            else:
                if pre is not None:
                    pre.run(r.addr)
                if parallel:
                    run_parallel([(lambda w=w: w.run(r.addr)) for w in writers])
                else:
                    writers[0].run(r.addr)
            page = libc.read(r.addr, ps)
            st = settled(s)
        src.close()
    if op == "r":
        check.eq(bad, 0, "reads that saw data other than the source page")
        check.true(page == source, "page 0 equals the source after the load")
    else:
        everyone = [*writers, *([pre] if pre else [])]
        lost = {w.ident: w.bad_rounds[:3] for w in everyone if w.bad_rounds}
        check.eq(lost, {}, "writers whose round of writes did not hold (writer: first rounds)")
        diff = write_load.differences(page, source, everyone)
        check.eq(diff, [], "page 0 after the load vs the writers' last writes and the source elsewhere")
    check.eq(st.errors, [], "handler errors")
    check.eq(st.states, {0: handler.DIRTY if op == "w" else handler.CLEAN}, "handler page states")
    check.true(st.faults, "at least one fault was served")
    check.eq(sorted({f["address"] & ~(ps - 1) for f in st.faults}), [r.addr], "fault pages")


@pytest.mark.deadline(120)
@pytest.mark.parametrize("name,op,parallel,n,prefault", LOADS, ids=[c[0] for c in LOADS])
def test_e2b_load(name: str, op: str, parallel: bool, n: int, prefault: bool) -> None:
    support.need_type(ANON)
    run_load(op, parallel, n, prefault)
