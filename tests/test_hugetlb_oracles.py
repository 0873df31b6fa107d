"""Negative controls of cases/hugetlb (docs/ARCHITECTURE.md rule 3).

* free_is: a count that is not the pool's;
* pool_restored: a reservation left behind (a mapping never unmapped), and counters that differ;
* byte_is_one_of: a byte neither value;
* hugetlb_madv_vs_map's "Unexpected huge page allocation": the race run without the blocker,
  with two unreserved pages, where mapping a second page succeeds, must fail.
The pool controls grow the default hugetlb pool by two pages and shrink it back.
"""

from __future__ import annotations

import pytest

from cases.hugetlb import oracles
from cases.hugetlb import test_madv_races as races
from lib.kernel import abi, libc, memtypes, system
from tests.controls import fails, passes

HP = system.default_hugetlb_size()






@pytest.fixture
def two_pages():
    if not system.is_root() or not HP:
        pytest.skip("needs root and a hugetlb size")
    path = system.hugetlb_path(HP, "nr_hugepages")
    nr = system.hugetlb_counter(HP, "nr_hugepages")
    with open(path, "w") as f:
        f.write(str(nr + 2))
    try:
        if system.hugetlb_counter(HP, "free_hugepages") < 2:
            pytest.skip("could not get two free huge pages")
        yield
    finally:
        with open(path, "w") as f:
            f.write(str(nr))


def test_free_is_fails_on_another_count() -> None:
    if not HP:
        pytest.skip("no hugetlb")
    free = system.hugetlb_counter(HP, "free_hugepages")
    fails(oracles.free_is, HP, free + 1, "control", contains="Unexpected number of free huge pages")
    oracles.free_is(HP, free, "control")


def test_pool_restored_fails_on_differing_counters() -> None:
    a = oracles.Counters(HP, 4, 4, 0, 0)
    oracles.pool_restored(a, oracles.Counters(HP, 4, 4, 0, 0), "control")
    fails(oracles.pool_restored, a, oracles.Counters(HP, 4, 4, 1, 0), "control", contains="not restored")
    fails(oracles.pool_restored, a, oracles.Counters(HP, 4, 3, 0, 0), "control", contains="not restored")


def test_pool_restored_fails_on_a_reservation_left_behind(two_pages) -> None:
    def body() -> None:
        before = oracles.counters(HP)
        flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.huge_size_flag(HP)
        libc.mmap(HP, abi.PROT_READ | abi.PROT_WRITE, flags)  # never unmapped
        fails(oracles.pool_restored, before, oracles.counters(HP), "control", contains="resv 1")

    passes(body)


def test_byte_is_one_of_fails_on_another_byte() -> None:
    def body() -> None:
        m = libc.mmap(4096)
        libc.fill(m, ord("x"), 4096)
        fails(oracles.byte_is_one_of, m, b".\0", "control", contains="0x78")
        libc.fill(m, ord("."), 4096)
        oracles.byte_is_one_of(m, b".\0", "control")

    passes(body)


def test_madv_vs_map_fails_without_the_blocker(two_pages, monkeypatch) -> None:
    def no_blocker(mem):
        return oracles.counters(mem.size), 0, 0

    monkeypatch.setattr(races, "_setup", no_blocker)
    mem = memtypes.MemType(memtypes.HUGETLB_ANON, HP, pages=1)

    def body() -> None:
        fails(races._race, mem, True, contains="Unexpected huge page allocation")

    passes(body)
