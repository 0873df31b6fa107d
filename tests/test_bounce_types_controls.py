"""Negative controls of bounce (uffd-stress) on the types added for it: shmem-private and
hugetlb-private (cases/missing/test_bounce.py).

docs/ARCHITECTURE.md rule 3.  The bounce oracle (every page's counter against count_verify,
EEXIST proven, faults served) must fail on these types too when the handler serves the wrong
page (source page 0 for every fault), and pass with uffd-stress' handler.  The types must be
what uffd-stress' set_test_type makes them: hugetlb-private a MAP_PRIVATE mapping of a hugetlb
memfd (released with MADV_DONTNEED), shmem-private a MAP_SHARED memfd (released with
MADV_REMOVE; only uffd-common's map_shared flag differs, which its shmem ops ignore).
Hugetlb pages are taken under the suite's run lock and journal and put back afterwards.
"""

from __future__ import annotations

import errno

import pytest

from cases.missing import test_bounce as bo
from lib.kernel import abi, memtypes, system, uffd
from lib.kernel.memtypes import HUGETLB_PRIVATE, SHMEM_PRIVATE, MemType
from lib.kernel.uffd import Msg
from lib.runner.isolation import run_isolated
from tests.controls import hugetlb_pages

DEFAULT_HUGE = system.default_hugetlb_size()
POOL = 16


@pytest.fixture(scope="module")
def hugetlb_pool():
    with hugetlb_pages(DEFAULT_HUGE, POOL):
        yield


def mem(kind: str, request: pytest.FixtureRequest) -> tuple[MemType, int]:
    """The type and a small page count (two per CPU)."""
    if kind == HUGETLB_PRIVATE:
        request.getfixturevalue("hugetlb_pool")
        return MemType(kind, DEFAULT_HUGE), 2 * bo.nr_cpus()
    return MemType(kind), 128 * bo.nr_cpus()


def wrong(b: bo.Bounce, m: Msg) -> bool:
    """A handler that copies source page 0 for every missing fault."""
    if b.sentinel.addr <= m.address < b.sentinel.end or m.is_wp:
        return bo.handle_fault(b, m)
    dst = m.address & ~(b.ps - 1)
    try:
        b.u.copy(dst, b.src.addr, b.ps, abi.CopyMode.WP if b.wp else 0)
    except uffd.UffdError as e:
        if e.errno != errno.EEXIST:
            raise
        b.u.wake(dst, b.ps)
    b.missing += 1
    return True


def test_new_types_are_in_the_matrix() -> None:
    names = [str(m) for m in bo.MEMS]
    assert "shmem-private" in names and "hugetlb-private" in names
    assert [m.mt.kind for m in bo.MEMS][:3] == ["anon", "shmem", "shmem-private"]


@pytest.mark.parametrize("kind,shared,advice", [(HUGETLB_PRIVATE, False, abi.Madv.DONTNEED),
                                                (SHMEM_PRIVATE, True, abi.Madv.REMOVE)])
def test_mapping_is_uffd_stress(kind: str, shared: bool, advice: int, request: pytest.FixtureRequest) -> None:
    mt, _n = mem(kind, request)
    assert mt.discard_advice == advice

    def body() -> None:
        r = bo.map_area(mt, 2)
        with open("/proc/self/maps") as f:
            line = next(ln for ln in f if ln.startswith(f"{r.addr:x}-"))
        assert line.split()[1] == ("rw-s" if shared else "rw-p"), line
        assert ("hugetlb" in line) == mt.hugetlb, line

    o = run_isolated(body, 30)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"


@pytest.mark.parametrize("kind", [SHMEM_PRIVATE, HUGETLB_PRIVATE])
def test_wrong_page_is_caught(kind: str, request: pytest.FixtureRequest) -> None:
    mt, n = mem(kind, request)
    o = run_isolated(lambda: bo.run_bounce(mt, n, bounces=4, handle=wrong), 60)
    assert o.kind == "fail", f"the oracle accepted a broken handler: {o.kind}: {o.message}"
    assert "corruption" in o.message or "counter differs" in o.message, o.message


@pytest.mark.parametrize("kind", [SHMEM_PRIVATE, HUGETLB_PRIVATE])
def test_right_handler_passes(kind: str, request: pytest.FixtureRequest) -> None:
    mt, n = mem(kind, request)
    o = run_isolated(lambda: bo.run_bounce(mt, n, bounces=4), 60)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"


def test_pool_rule_matches_uffd_stress() -> None:
    """The hugetlb pool grown for a bounce is uffd-stress' newer precondition, 2 x pages + 10."""
    bm = bo.BounceMem(MemType(HUGETLB_PRIVATE, DEFAULT_HUGE))
    assert bm.pool_needed == 2 * bm.nr_pages + 10
    assert memtypes.HUGETLB_PRIVATE in memtypes.UFFD_UNIT_KINDS
