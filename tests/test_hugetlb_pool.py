"""Negative controls of lib.kernel.hugetlb_pool, the pool checks of the hugetlb fork() cases.

The checks read sysfs counters; here the counters are replaced by a fake pool, so each verdict
(pass, skip from the pool-size probe, failure with the numbers) is shown for the pool that must
produce it, on any machine.
"""

from __future__ import annotations

import pytest

from lib.kernel import hugetlb_pool, system

GIB = 1 << 30


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counters = {"nr_hugepages": 2, "free_hugepages": 2, "resv_hugepages": 0}
    monkeypatch.setattr(system, "hugetlb_counter", lambda size, name: counters[name])
    return counters


def test_before_map_passes_with_two_free_pages(pool: dict[str, int]) -> None:
    assert hugetlb_pool.require_before_map(GIB).free == 2


def test_before_map_skips_when_the_pool_is_too_small(pool: dict[str, int]) -> None:
    pool.update(nr_hugepages=1, free_hugepages=1)
    with pytest.raises(pytest.skip.Exception, match="nr_hugepages 1, free_hugepages 1"):
        hugetlb_pool.require_before_map(GIB)


def test_before_map_fails_when_the_pool_has_the_pages_but_not_free(pool: dict[str, int]) -> None:
    pool.update(free_hugepages=1)
    with pytest.raises(AssertionError, match=r"nr_hugepages 2, free_hugepages 1.*setup problem"):
        hugetlb_pool.require_before_map(GIB)


def test_before_map_fails_when_another_mapping_reserved_a_page(pool: dict[str, int]) -> None:
    pool.update(resv_hugepages=1)
    with pytest.raises(AssertionError, match=r"resv_hugepages 1 before mapping"):
        hugetlb_pool.require_before_map(GIB)


def test_spare_before_fork(pool: dict[str, int]) -> None:
    pool.update(free_hugepages=1)  # anonymous: the mapped page is in use, its reservation spent
    hugetlb_pool.require_spare_before_fork(GIB)
    pool.update(free_hugepages=0)
    with pytest.raises(AssertionError, match=r"free_hugepages 0.*right before fork"):
        hugetlb_pool.require_spare_before_fork(GIB)


def test_spare_before_fork_counts_only_the_own_reservation(pool: dict[str, int]) -> None:
    pool.update(free_hugepages=1, resv_hugepages=1)  # a private file mapping's own reservation
    hugetlb_pool.require_spare_before_fork(GIB, own_reserved=1)
    with pytest.raises(AssertionError, match=r"resv_hugepages 1 right before fork"):
        hugetlb_pool.require_spare_before_fork(GIB)  # someone else's reservation


def test_wp_fork_checks_the_pool_before_forking(pool: dict[str, int]) -> None:
    """cases/wp_async/test_wp_fork.child_bit57 fails with the numbers, and forks no child,
    when the spare page is gone."""
    from cases.wp_async.test_wp_fork import child_bit57

    class NoServer:
        def stats(self):
            return type("S", (), {"events": []})()

    pool.update(free_hugepages=0)
    with pytest.raises(AssertionError, match="right before fork"):
        child_bit57(0, False, NoServer(), hpage=GIB)
