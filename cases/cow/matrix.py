"""The COW matrix as data: cow.c's test descriptions crossed with its backings.

TAP names are cow.c's: ``<description> ... <backing suffix>``, e.g.
``Basic COW after fork() ... with PTE-mapped THP (64 kB)``.
"""

from __future__ import annotations

import pytest

from cases.cow.backings import anon_backings, non_anon_backings

ANON = anon_backings()
NON_ANON = non_anon_backings()


def name(desc: str, backing) -> str:
    return f"{desc} ... {backing.suffix}"


def anon_cases(desc: str):
    """Parametrise a test over every anonymous backing (cow.c run_anon_test_case)."""
    return pytest.mark.parametrize("backing", ANON, ids=[name(desc, b) for b in ANON])


def anon_case_table(cases: list[tuple], argnames: str):
    """Parametrise a test over cow.c's test cases x every anonymous backing, in cow.c's order
    (each case over all backings).  ``cases`` rows are (description, *args) and ``argnames``
    names the args; the test also receives ``backing``."""
    rows = [(*args, b) for desc, *args in cases for b in ANON]
    ids = [name(desc, b) for desc, *_ in cases for b in ANON]
    return pytest.mark.parametrize(f"{argnames},backing", rows, ids=ids)


def non_anon_cases(desc: str):
    """Parametrise a test over every non-anonymous backing (cow.c run_non_anon_test_case)."""
    return pytest.mark.parametrize("backing", NON_ANON, ids=[name(desc, b) for b in NON_ANON])
