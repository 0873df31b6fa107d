"""Oracles of the thp_split area: each raises AssertionError naming what the kernel got wrong.

* :func:`write_sigsegv`: mkdirty.c's do_test_write_sigsegv: a user-mode write to a page of a
  read-only VMA dies of SIGSEGV and leaves the page as it was.
* :func:`pattern` / :func:`content_kept`: every page keeps the bytes written before the split.
* :func:`pfns_kept`: a split of the mapping keeps every page where it was (same PFN).
* :func:`bits_kept`: a pagemap bit (uffd-wp, soft-dirty) set on every page before a split is
  set on every page after it.

Negative controls: tests/test_thp_split_oracles.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lib.kernel import access, libc
from lib.kernel.pagemap import Entry, Pagemap

PAGE = libc.PAGE_SIZE


def write_sigsegv(addr: int) -> None:
    """mkdirty.c do_test_write_sigsegv: "SIGSEGV generated, page not modified"."""
    before = libc.read(addr, 8)
    a = access.write(addr)
    after = libc.read(addr, 8)
    if not a.segv:
        raise AssertionError(f"SIGSEGV generated, page not modified: the write to the read-only VMA: {a}")
    if after != before:
        raise AssertionError(f"SIGSEGV generated, page not modified: page changed "
                             f"({before.hex()} -> {after.hex()})")


def page_byte(i: int) -> int:
    """The byte page ``i`` of a region is filled with (never 0, differs between neighbours)."""
    return 1 + (i * 7) % 251


def pattern(addr: int, npages: int) -> None:
    for i in range(npages):
        libc.fill(addr + i * PAGE, page_byte(i), PAGE)


def content_kept(pages: Iterable[tuple[int, int]], what: str) -> None:
    """``pages``: (address now, index of the page when the pattern was written)."""
    bad = [(a, i) for a, i in pages if not libc.is_uniform(a, page_byte(i), PAGE)]
    if bad:
        a, i = bad[0]
        raise AssertionError(f"{what}: {len(bad)} page(s) lost their content, first page {i} at {a:#x} "
                             f"(expected {page_byte(i):#04x}, starts with {libc.read(a, 8).hex()})")


def pfns_kept(before: dict[int, int | None], after: dict[int, int | None], what: str) -> None:
    """PFNs by page index before and after; every page present before is present after, at the
    same PFN."""
    moved = [(i, p, after.get(i)) for i, p in before.items() if p is not None and after.get(i) != p]
    if moved:
        i, p, q = moved[0]
        got = f"{q:#x}" if q is not None else "not present"
        raise AssertionError(f"{what}: {len(moved)} page(s) changed PFN, first page {i}: {p:#x} -> {got}")


def bits_kept(entries: dict[int, Entry], bit: Callable[[Entry], bool], name: str, what: str) -> None:
    """Every entry (by page index) has ``bit`` set."""
    lost = sorted(i for i, e in entries.items() if not bit(e))
    if lost:
        raise AssertionError(f"{what}: {name} bit lost on {len(lost)} of {len(entries)} pages "
                             f"(first page {lost[0]}: {entries[lost[0]]})")


def entries_at(pages: Iterable[tuple[int, int]]) -> dict[int, Entry]:
    with Pagemap() as pm:
        return {i: pm.entry(a) for a, i in pages}
