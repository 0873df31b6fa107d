"""Negative controls of cases/thp_split (docs/ARCHITECTURE.md rule 3): each oracle must fail on
memory where the kernel behaviour it checks is absent.

* write_sigsegv: a writable page (the write succeeds, the page changes);
* content_kept: a page rewritten after the pattern;
* pfns_kept: a page discarded (MADV_DONTNEED) and faulted again elsewhere, or not at all;
* bits_kept: uffd-wp bits cleared by UFFDIO_WRITEPROTECT, and a page zapped by MADV_DONTNEED
  (anonymous memory keeps no marker).
Every control runs isolated with a deadline, as a case does.
"""

from __future__ import annotations

from cases.thp_split import oracles
from lib.kernel import abi, access, libc, needs, uffd
from tests.controls import fails, passes

PAGE = libc.PAGE_SIZE






def test_write_sigsegv_fails_on_a_writable_page() -> None:
    def body() -> None:
        m = libc.mmap(PAGE)
        libc.fill(m, 1, PAGE)
        fails(oracles.write_sigsegv, m, contains="succeeded")
        assert libc.read(m, 8) != b"\x01" * 8, "the write reached the page"

    passes(body, 30.0)


def test_write_sigsegv_passes_on_a_read_only_page() -> None:
    def body() -> None:
        m = libc.mmap(PAGE)
        libc.fill(m, 1, PAGE)
        libc.mprotect(m, PAGE, abi.PROT_READ)
        oracles.write_sigsegv(m)
        assert access.read(m).ok

    passes(body, 30.0)


def test_content_kept_fails_on_a_rewritten_page() -> None:
    def body() -> None:
        m = libc.mmap(8 * PAGE)
        oracles.pattern(m, 8)
        pages = [(m + i * PAGE, i) for i in range(8)]
        oracles.content_kept(pages, "control")
        libc.touch_write(m + 5 * PAGE + 100, 0)
        fails(oracles.content_kept, pages, "control", contains="first page 5")

    passes(body, 30.0)


def test_pfns_kept_fails_on_a_discarded_page() -> None:
    def body() -> None:
        needs.root("PFNs")
        m = libc.mmap(4 * PAGE)
        oracles.pattern(m, 4)
        pages = [(m + i * PAGE, i) for i in range(4)]
        before = {i: e.pfn for i, e in oracles.entries_at(pages).items()}
        libc.madvise(m + PAGE, PAGE, abi.Madv.DONTNEED)
        after = {i: e.pfn for i, e in oracles.entries_at(pages).items()}
        fails(oracles.pfns_kept, before, after, "control", contains="not present")
        fails(oracles.pfns_kept, {0: 0x1000}, {0: 0x2000}, "control", contains="0x1000 -> 0x2000")

    passes(body, 30.0)


def test_bits_kept_fails_when_uffd_wp_is_lost() -> None:
    def body() -> None:
        needs.uffd_features(int(abi.Feature.PAGEFAULT_FLAG_WP))
        m = libc.mmap(4 * PAGE)
        oracles.pattern(m, 4)
        pages = [(m + i * PAGE, i) for i in range(4)]
        with uffd.open_for(int(abi.Feature.PAGEFAULT_FLAG_WP)) as u:
            u.register(m, 4 * PAGE, abi.RegisterMode.WP)
            u.writeprotect(m, 4 * PAGE, True)
            oracles.bits_kept(oracles.entries_at(pages), lambda e: e.uffd_wp, "uffd-wp", "control")
            libc.madvise(m + 2 * PAGE, PAGE, abi.Madv.DONTNEED)
            fails(oracles.bits_kept, oracles.entries_at(pages), lambda e: e.uffd_wp, "uffd-wp", "control",
                  contains="lost on 1 of 4")
            u.writeprotect(m, 4 * PAGE, False)
            fails(oracles.bits_kept, oracles.entries_at(pages), lambda e: e.uffd_wp, "uffd-wp", "control",
                  contains="lost on 4 of 4")

    passes(body, 30.0)
