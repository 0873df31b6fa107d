"""MISSING faults served by UFFDIO_COPY, the handler in a separate process (SCM_RIGHTS).

Documentation/admin-guide/mm/userfaultfd.rst: a fault on a registered, unpopulated page is
reported as UFFD_EVENT_PAGEFAULT with the page's address; UFFD_PAGEFAULT_FLAG_WRITE is set
for a write fault and clear for a read fault; UFFDIO_COPY installs the page and wakes the
faulting thread.  Checked: exactly one fault, at the touched page, with the right flag; the
page holds the source content (and the write on top for a write); pagemap shows only that
page present.  This is the foundation's proof case; the full matrix lives beside it.
"""

import pytest

from lib import abi, check, libc, needs
from lib.backing import MemType
from lib.handler import Source
from lib.pagemap import Pagemap
from lib.serve import served

BACKINGS = [MemType("anon"), MemType("hugetlb-private", 2 * 1024 * 1024)]
OPS = ["read", "write"]
NPAGES = 4
TARGET = 2
MARK = b"kmm-write-fault!" * 4


def _id(op: str, mt: MemType) -> str:
    return f"missing {op} fault served by UFFDIO_COPY on {mt.name} {mt.page_size // 1024} kB (scm_rights handler)"


@pytest.mark.parametrize("op,mt", [(o, m) for m in BACKINGS for o in OPS], ids=[_id(o, m) for m in BACKINGS for o in OPS])
def test_missing_fault_copy(op: str, mt: MemType) -> None:
    if mt.hugetlb:
        needs.hugetlb_size(mt.hpage)
    needs.uffd_features(mt.missing_feature)
    region = mt.map(NPAGES)
    src = Source(region.size, pattern=0x5EED)
    addr = region.page(TARGET)
    with served(region, "scm_rights", mt.missing_feature, source=src) as s:
        if op == "read":
            got = libc.read(addr, region.page_size)
            check.eq(got == src.page(TARGET, region.page_size), True, "read fault returns the source page")
        else:
            libc.write(addr, MARK)
            want = MARK + src.page(TARGET, region.page_size)[len(MARK):]
            check.eq(libc.read(addr, region.page_size) == want, True, "written page = source page + the write")
        st = s.stats()
    check.eq(st.errors, [], "handler errors")
    check.eq([f["address"] & ~(region.page_size - 1) for f in st.faults], [addr], "fault addresses")
    flags = st.faults[0]["flags"]
    if op == "read":
        check.mask_lacks(flags, abi.PagefaultFlag.WRITE, "read fault flags")
    else:
        check.mask_has(flags, abi.PagefaultFlag.WRITE, "write fault flags")
    with Pagemap() as pm:
        present = [e.present for e in pm.entries(region.addr, NPAGES, region.page_size)]
    check.eq(present, [i == TARGET for i in range(NPAGES)], "pagemap present bits per page")
