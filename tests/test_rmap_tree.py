"""The rmap area's process tree and its has_same_pfn oracle (cases/rmap), on any machine.

rmap.c's cases migrate a page and need two NUMA nodes; the tree and the oracle do not:
* control: a worker that only publishes the PFN it maps (a private anonymous page shared
  copy-on-write by the whole tree) leaves every process agreeing: status 0;
* negative control: a worker that writes the page first (copy-on-write gives it a page of its
  own) publishes a PFN no other process maps: FAIL_ON_CHECK;
* a worker that fails its work reports FAIL_ON_WORK (rmap.c's "Failed in worker").
"""

from __future__ import annotations

from cases.rmap import tree
from cases.rmap.test_migrate import SEED, has_same_pfn, pfn_of
from lib.kernel import libc, memory, needs
from tests.controls import passes

PAGE = libc.PAGE_SIZE




def _tree(write_first: bool, fail_work: bool = False) -> tree.TreeResult:
    needs.root("PFNs")
    r = memory.anon(PAGE)
    libc.fill(r.addr, 0xCF, PAGE)

    def work(shared: tree.Shared) -> int:
        if fail_work:
            return tree.FAIL_ON_WORK
        if write_first:
            libc.fill(r.addr, 0x11, PAGE)
        shared.expected_pfn = pfn_of(r.addr)
        return 0

    return tree.propagate_children(SEED, lambda: libc.touch_read(r.addr), work, has_same_pfn([r.addr]))


def test_tree_agrees_on_a_shared_page() -> None:
    def body() -> None:
        res = _tree(write_first=False)
        assert res.error == "" and res.status == 0, res
        assert res.processes > 5, res

    passes(body, 120.0)


def test_has_same_pfn_fails_when_the_worker_maps_another_page() -> None:
    def body() -> None:
        res = _tree(write_first=True)
        assert res.status == tree.FAIL_ON_CHECK, res

    passes(body, 120.0)


def test_worker_failure_is_reported() -> None:
    def body() -> None:
        res = _tree(write_first=False, fail_work=True)
        assert res.status & tree.FAIL_ON_WORK, res

    passes(body, 120.0)
