"""Fixtures of the COW area (all run in the pytest process).

* swap for the swapped-out variants: the suite's ``swap_setup`` fixture (lib/runner/fixtures.py:
  the active swap, else a temporary zram device for the run; ``--kmm-no-swap-setup`` turns it
  off and the swapped variants then skip as cow.c's do), requested only by cases whose backing
  swaps, so a run without them never touches swap.  Why there is no swap goes into the skip
  reason (backings.SWAP_STATE).
* ``gup_test`` (the gup_test debugfs file) is the suite's fixture in lib/runner/fixtures.py.
"""

from __future__ import annotations

import pytest

from cases.cow import backings


@pytest.fixture(autouse=True)
def _swap_for_swapped_variants(request: pytest.FixtureRequest) -> None:
    cs = getattr(request.node, "callspec", None)
    if cs is not None and any(getattr(v, "swap", False) for v in cs.params.values()):
        backings.SWAP_STATE["note"] = request.getfixturevalue("swap_setup").note
