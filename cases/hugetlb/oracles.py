"""Oracles of the hugetlb area: pool counters and the bytes a race may leave.

* :func:`free_is`: hugetlb-madvise.c's validate_free_pages: free_hugepages of the size is
  exactly what the step left (counted from the case's start, so a pool grown for the run by
  other cases changes nothing).
* :func:`pool_restored`: after the case unmapped everything, the pool's counters (nr, free,
  resv, surplus) are what they were before it mapped anything: no page leaked, no
  reservation left behind (Documentation/admin-guide/mm/hugetlbpage.rst defines them).
* :func:`byte_is_one_of`: the byte a write/discard race leaves is one a sequential order of
  the two could leave (written value, or zero after MADV_DONTNEED: hugetlb-madvise.c).

Negative controls: tests/test_hugetlb_oracles.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.kernel import libc, system


@dataclass(frozen=True)
class Counters:
    size: int
    nr: int
    free: int
    resv: int
    surplus: int

    def __str__(self) -> str:
        return (f"{system.size_label(self.size)} pool: nr {self.nr}, free {self.free}, resv {self.resv}, "
                f"surplus {self.surplus}")


def counters(size: int) -> Counters:
    c = {k: system.hugetlb_counter(size, k) for k in
         ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")}
    return Counters(size, c["nr_hugepages"], c["free_hugepages"], c["resv_hugepages"], c["surplus_hugepages"])


def free_is(size: int, expected: int, step: str) -> None:
    got = system.hugetlb_counter(size, "free_hugepages")
    if got != expected:
        raise AssertionError(f"Unexpected number of free huge pages after {step}: expected {expected}, "
                             f"got {got} ({counters(size)})")


def pool_restored(before: Counters, after: Counters, what: str) -> None:
    if after != before:
        raise AssertionError(f"{what}: hugetlb pool not restored: before {before}; after {after}")


def byte_is_one_of(addr: int, allowed: bytes, what: str) -> None:
    b = libc.read(addr, 1)[0]
    if b not in allowed:
        raise AssertionError(f"{what}: byte {b:#04x}, expected one of {', '.join(f'{a:#04x}' for a in allowed)}")
