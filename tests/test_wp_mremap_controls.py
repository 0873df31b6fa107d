"""Negative controls of uffd-wp-mremap (cases/wp_async/test_wp_mremap.py): the oracle can fail.

docs/ARCHITECTURE.md rule 3.  check_uffd_wp_state must report a base page whose bit 57 is not
set after UFFDIO_WRITEPROTECT and one whose bit is still set after the move; the real case,
run against this kernel, must fail when the write-protection is left out (nothing to see
before the move) and when the "move" leaves the folio where it is (the registered, protected
range keeps bit 57, which is what a kernel keeping uffd-wp across mremap() would show).
"""

from __future__ import annotations

import pytest

from cases.wp_async import test_wp_mremap as wpm
from lib.kernel import system
from lib.runner import isolation

BASE_PRIVATE = wpm.Folio(system.PAGE_SIZE, private=True, swapout=False, hugetlb=False)
BASE_SHARED = wpm.Folio(system.PAGE_SIZE, private=False, swapout=False, hugetlb=False)


def run(fn) -> isolation.Outcome:
    return isolation.run_isolated(fn, 30, skip_types=(pytest.skip.Exception,))


def test_names_are_upstream() -> None:
    assert BASE_PRIVATE.name == "test_one_folio(size=4096, private=true, swapout=false, hugetlb=false)"
    assert wpm.FOLIOS[0].name == "test_one_folio(size=4096, private=false, swapout=false, hugetlb=false)"
    assert [f for f in wpm.FOLIOS if f.hugetlb and f.swapout] == []


def test_oracle_reports_an_unset_bit() -> None:
    with pytest.raises(AssertionError, match="uffd-wp not set for pte 2!"):
        wpm.check_uffd_wp_state([True, True, False, True], True, "control")


def test_oracle_reports_a_bit_kept_after_the_move() -> None:
    with pytest.raises(AssertionError, match="uffd-wp not clear for pte 0!"):
        wpm.check_uffd_wp_state([True, False], False, "control")


def test_oracle_passes_uniform_state() -> None:
    wpm.check_uffd_wp_state([True] * 4, True, "control")
    wpm.check_uffd_wp_state([False] * 4, False, "control")


@pytest.mark.parametrize("f", [BASE_PRIVATE, BASE_SHARED], ids=str)
def test_real_case_fails_without_write_protection(f: wpm.Folio) -> None:
    def body() -> None:
        f.require()
        wpm.run_one_folio(f, protect=False)

    o = run(body)
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind == "fail" and "uffd-wp not set" in o.message, (o.kind, o.message)


@pytest.mark.parametrize("f", [BASE_PRIVATE, BASE_SHARED], ids=str)
def test_real_case_fails_when_the_bit_survives(f: wpm.Folio) -> None:
    def body() -> None:
        f.require()
        wpm.run_one_folio(f, move=lambda old, size, new: old)  # the protected folio stays put

    o = run(body)
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind == "fail" and "uffd-wp not clear" in o.message, (o.kind, o.message)


@pytest.mark.parametrize("f", [BASE_PRIVATE, BASE_SHARED], ids=str)
def test_real_case_passes(f: wpm.Folio) -> None:
    def body() -> None:
        f.require()
        wpm.run_one_folio(f)

    o = run(body)
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind == "pass", (o.kind, o.message)
