"""Oracles of the ksm area (ksm_functional_tests.c).

* :func:`merged`: after ksmd's full scans, a range of identical pages maps some PFN more
  than once (the setup ksm_functional_tests.c's mmap_and_merge_range relies on);
* :func:`unmerged`: "Pages were unmerged": no PFN mapped twice in the range
  (range_maps_duplicates false);
* :func:`call_returns`: a system call made in a thread returns within a bound; a thread still
  asleep at the bound fails naming its wchan, a thread still runnable was starved (cannot test).

Negative controls: tests/test_ksm_oracles.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lib import check
from lib.kernel import ksm, libc, tasks


def merged(addr: int, size: int) -> None:
    if not ksm.range_maps_duplicates(addr, size):
        raise AssertionError("KSM merged none of the identical MADV_MERGEABLE pages")


def unmerged(addr: int, size: int) -> None:
    if ksm.range_maps_duplicates(addr, size):
        raise AssertionError("Pages were unmerged: the range still maps a PFN more than once")


def call_returns(fn: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    out: dict[str, object] = {}

    def run() -> None:
        out["tid"] = libc.gettid()
        try:
            out["ret"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        tid = int(out.get("tid", 0))
        state = tasks.task_state(tid) if tid else "?"
        if state == "R":
            raise check.CannotTest(f"{what}: still runnable after {timeout}s (starved)")
        raise AssertionError(f"{what} did not return within {timeout}s: thread in state {state} "
                             f"at {tasks.task_wchan(tid) if tid else '?'}")
    if "err" in out:
        raise out["err"]  # type: ignore[misc]
    return out.get("ret")
