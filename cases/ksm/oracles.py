"""Oracles of the ksm area (ksm_functional_tests.c).

* :func:`merged`: after ksmd's full scans, a range of identical pages maps some PFN more
  than once (the setup ksm_functional_tests.c's mmap_and_merge_range relies on);
* :func:`unmerged`: "Pages were unmerged": no PFN mapped twice in the range
  (range_maps_duplicates false);
* :func:`call_returns`: a system call made in a thread returns within a bound; a thread still
  asleep at the bound fails naming its wchan, a thread still runnable was starved (cannot test)
  (lib.kernel.toucher.Toucher.call + join).

Negative controls: tests/test_ksm_oracles.py.
"""

from __future__ import annotations

from collections.abc import Callable

from lib.kernel import ksm
from lib.kernel.toucher import Toucher


def merged(addr: int, size: int) -> None:
    if not ksm.range_maps_duplicates(addr, size):
        raise AssertionError("KSM merged none of the identical MADV_MERGEABLE pages")


def unmerged(addr: int, size: int) -> None:
    if ksm.range_maps_duplicates(addr, size):
        raise AssertionError("Pages were unmerged: the range still maps a PFN more than once")


def call_returns(fn: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    return Toucher.call(fn, what).join(timeout)
