"""ksm_functional_tests.c test_unmerge_uffd_wp: unmerging KSM pages that uffd-wp protects.

Two MiB of identical pages (MADV_NOHUGEPAGE, filled with 0xcf, MADV_MERGEABLE) are merged by
ksmd (ksm_merge() waits two full scans after starting ksmd; ksmd runs already here, so up
to MAX_SCANS scans, checked after each); the range is then registered with
UFFDIO_REGISTER_MODE_WP and write-protected, and MADV_UNMERGEABLE must unmerge every page
("Pages were unmerged") and return: breaking a KSM page by a write fault on a uffd-wp protected
entry would wait for userspace forever; mm/ksm.c break_ksm() unshares (FAULT_FLAG_UNSHARE)
instead, which the uffd-wp bit does not stop.  The content stays 0xcf, and every page stays write-protected:
the unshare copies the uffd-wp bit into the new entry (mm/memory.c wp_page_copy), protection
lasting until userspace resolves it (userfaultfd.rst).  ksmd is started by the settings
fixture (run 1, a batch covering the range, short sleeps) and stopped again after the case.
Reference: tools/testing/selftests/mm/ksm_functional_tests.c (its [RUN] name);
Documentation/admin-guide/mm/ksm.rst; Documentation/admin-guide/mm/userfaultfd.rst.
"""

from __future__ import annotations

import pytest

from cases.ksm import oracles
from lib import check
from lib.kernel import abi, ksm, libc, needs, uffd
from lib.kernel.pagemap import Pagemap

PAGE = libc.PAGE_SIZE
SIZE = 2 * 1024 * 1024
WP = int(abi.Feature.PAGEFAULT_FLAG_WP)
MAX_SCANS = 6  # full scans the merge may take (lib.kernel.ksm.wait_merged: three expected)


@pytest.fixture
def ksmd(settings) -> None:
    if not ksm.available():
        pytest.skip(f"open(\"{ksm.KSM}/run\") failed")
    ksm.prepare(settings)


def mmap_and_merge_range(val: int, size: int) -> int:
    m = libc.mmap(size)
    libc.madvise(m, size, abi.Madv.NOHUGEPAGE)
    libc.fill(m, val, size)
    libc.madvise(m, size, abi.Madv.MERGEABLE)
    scans = ksm.wait_merged(m, size, MAX_SCANS)
    check.diag(f"merged after {scans} full scan(s)")
    oracles.merged(m, size)
    return m


@pytest.mark.tap("test_unmerge_uffd_wp")
@pytest.mark.deadline(90)
def test_unmerge_uffd_wp(ksmd: None) -> None:
    needs.root("PFNs tell merged pages")
    needs.uffd_features(WP)
    m = mmap_and_merge_range(0xCF, SIZE)
    with uffd.open_for(WP) as u:
        u.register(m, SIZE, abi.RegisterMode.WP)
        u.writeprotect(m, SIZE, True)
        check.note("MADV_UNMERGEABLE of the uffd-wp protected range")
        oracles.call_returns(lambda: libc.madvise(m, SIZE, abi.Madv.UNMERGEABLE), "MADV_UNMERGEABLE")
        oracles.unmerged(m, SIZE)
        check.true(libc.is_uniform(m, 0xCF, SIZE), "the range still holds 0xcf after unmerging")
        with Pagemap() as pm:
            wp = sum(e.uffd_wp for e in pm.entries(m, SIZE // PAGE))
        check.eq(wp, SIZE // PAGE, "pages still uffd-wp protected after unmerging")
