"""Negative controls of cases/ksm and lib/kernel/ksm (docs/ARCHITECTURE.md rule 3).

* unmerged: a range mapping one PFN twice (a memfd page mapped at two adjacent addresses);
* merged: a range of distinct pages;
* call_returns: a call that sleeps (read(2) of an empty pipe) fails naming where it sleeps;
* wait_full_scans: with ksmd stopped, no scan completes: cannot test.
"""

from __future__ import annotations

import os

import pytest

from cases.ksm import oracles
from lib import check
from lib.kernel import abi, ksm, libc, needs
from tests.controls import passes

PAGE = libc.PAGE_SIZE




def test_unmerged_fails_on_a_pfn_mapped_twice() -> None:
    def body() -> None:
        needs.root("PFNs")
        fd = libc.memfd_create("ksm-control")
        os.ftruncate(fd, PAGE)
        m = libc.mmap(2 * PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, fd, 0)
        libc.mmap(PAGE, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=m + PAGE)
        libc.fill(m, 1, 2 * PAGE)
        try:
            oracles.unmerged(m, 2 * PAGE)
        except AssertionError as e:
            assert "Pages were unmerged" in str(e)
        else:
            raise AssertionError("unmerged passed on a range mapping one PFN twice")
        oracles.merged(m, 2 * PAGE)

    passes(body)


def test_merged_fails_on_distinct_pages() -> None:
    def body() -> None:
        needs.root("PFNs")
        m = libc.mmap(4 * PAGE)
        libc.fill(m, 0xCF, 4 * PAGE)
        oracles.unmerged(m, 4 * PAGE)
        with pytest.raises(AssertionError, match="merged none"):
            oracles.merged(m, 4 * PAGE)

    passes(body)


def test_call_returns_fails_on_a_sleeping_call() -> None:
    def body() -> None:
        r, _w = os.pipe()
        with pytest.raises(AssertionError, match=r"still blocked after .* state S wchan \w*pipe_read"):
            oracles.call_returns(lambda: os.read(r, 1), "read of an empty pipe", timeout=0.5)
        assert oracles.call_returns(lambda: 7, "a call that returns", timeout=5) == 7

    passes(body)


def test_wait_full_scans_cannot_test_with_ksmd_stopped() -> None:
    if not ksm.available() or ksm.read("run") != 0:
        pytest.skip("needs KSM present and stopped")

    def body() -> None:
        with pytest.raises(check.CannotTest, match="no full scan"):
            ksm.wait_full_scans(1, timeout=0.5)

    passes(body)
