"""One REMOVE over a span of touched and untouched pages (e2b TestRemoveMultiPage).

Six pages; pages 0 and 2 are written, the punching advice (DONTNEED on private memory,
MADV_REMOVE on shared memory) covers pages 1..4.  The REMOVE messages tile [page 1, page 5);
afterwards every page of the span reads zero, each through a MISSING fault again (the handler
zero-fills pages it was told were removed, faulted or not), page 0 keeps its data without a
fault and page 5, never touched, is served from the source.  1 GiB backings are left out: a
case maps at most one 1 GiB page.
"""

from __future__ import annotations

import pytest

from cases.remove.backings import BACKINGS, Backing, matrix
from cases.remove.support import (
    HEAD,
    TOPOLOGIES,
    check_no_errors,
    check_ranges_cover,
    check_source,
    check_zero,
    fault_records,
    ranges_of,
    read_async,
    served_remove,
)
from lib import check
from lib.kernel import libc
from lib.kernel.handler import Options
from lib.kernel.serve import flush

NPAGES, TOUCHED, SPAN = 6, (0, 2), (1, 5)
MARK = 0x5A


def multi_page(b: Backing, topology: str, options: Options | None = None) -> None:
    with served_remove(b, NPAGES, topology, options) as (region, s):
        ps = region.page_size
        for i in TOUCHED:
            libc.fill(region.page(i), MARK, ps)
        start, end = region.page(SPAN[0]), region.page(SPAN[1])
        libc.madvise(start, end - start, b.discard_advice)
        faults_before = len(s.stats().faults)
        for i in range(*SPAN):
            read_async(region.page(i), HEAD).join()
            check_zero(region.page(i), ps, f"page {i} inside the span")
        check.true(libc.is_uniform(region.page(0), MARK, ps), "page 0 (outside, written) keeps its data")
        read_async(region.page(5), HEAD).join()
        check_source(region.page(5), 5, "page 5 (outside, untouched) served from the source")
        flush(s.handler)
        st = s.stats()
    check_no_errors(st)
    check_ranges_cover(ranges_of(st.events), start, end, "REMOVE ranges")
    check.eq(len(st.faults) - faults_before, SPAN[1] - SPAN[0] + 1,
             "MISSING faults after the REMOVE (one per span page, one for page 5)" + fault_records(st))


@pytest.mark.parametrize(
    "b,topology",
    matrix([b for b in BACKINGS if b.max_pages >= NPAGES],
           lambda b, t: f"{b.punch_name} over touched and untouched pages on {b} ({t} handler)", TOPOLOGIES))
def test_multi_page(b: Backing, topology: str) -> None:
    multi_page(b, topology)
