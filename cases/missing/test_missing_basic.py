"""MISSING faults served by UFFDIO_COPY, the handler in a separate process (SCM_RIGHTS).

Documentation/admin-guide/mm/userfaultfd.rst: a fault on a registered, unpopulated page is
reported as UFFD_EVENT_PAGEFAULT with the page's address; UFFD_PAGEFAULT_FLAG_WRITE is set
for a write fault and clear for a read fault; UFFDIO_COPY installs the page and wakes the
faulting thread.  Checked: exactly one fault, at the touched page, with the right flag; the
page holds the source content (and the write on top for a write); pagemap shows only that
page present.  The uffd is opened with UFFD_USER_MODE_ONLY as uffd-unit-tests does, so the
case runs unprivileged as well.  Memory types (lib.kernel.memtypes): ``anon`` and
``hugetlb-private`` (an MFD_HUGETLB memfd mapped MAP_PRIVATE).
"""

import pytest

from lib import check
from lib.kernel import abi, libc, needs
from lib.kernel.handler import Options, Source
from lib.kernel.memtypes import ANON, HUGETLB_PRIVATE, MemType
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import served

BACKINGS = [MemType(ANON), MemType(HUGETLB_PRIVATE, 2 * 1024 * 1024)]
OPS = ["read", "write"]
NPAGES = 4
TARGET = 2
MARK = b"kmm-write-fault!" * 4


def _id(op: str, mt: MemType) -> str:
    return f"missing {op} fault served by UFFDIO_COPY on {mt} (scm_rights handler)"


def missing_fault_copy(op: str, mt: MemType, *, touch: str | None = None, options: Options | None = None,
                       prefault: tuple[int, ...] = (), topology: str = "scm_rights") -> None:
    """The oracle.  ``touch``, ``options`` and ``prefault`` exist for the negative controls:
    touching with a different op, a wrong handler, or an extra populated page must fail it."""
    mt.require()
    needs.uffd_features(mt.missing_feature, user_mode_only=True)
    region = mt.map(NPAGES)
    src = Source(region.size, pattern=0x5EED)
    addr = region.page(TARGET)
    for i in prefault:
        libc.touch_write(region.page(i))
    with served(region, topology, mt.missing_feature, source=src, options=options, user_mode_only=True) as s:
        if (touch or op) == "read":
            got = libc.read(addr, region.page_size)
        else:
            libc.write(addr, MARK)
            got = libc.read(addr, region.page_size)
        st = s.stats()
    want = src.page(TARGET, region.page_size)
    if op == "write":
        want = MARK + want[len(MARK):]
    extra = " + the write" if op == "write" else ""
    check.true(got == want, f"page content after the {op} fault equals the source page{extra}")
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


MATRIX = [(o, m) for m in BACKINGS for o in OPS]


@pytest.mark.parametrize("op,mt", MATRIX, ids=[_id(o, m) for o, m in MATRIX])
def test_missing_fault_copy(op: str, mt: MemType) -> None:
    missing_fault_copy(op, mt)
