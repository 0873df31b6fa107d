"""Fixtures of the write-protect area (pytest process).

``wp_swap``: swap for the MADV_PAGEOUT + swap-in cases, from the suite's ``swap_setup`` fixture
(lib/runner/fixtures.py: the active swap, else a temporary zram device for the run;
``--kmm-no-swap-setup`` turns it off and those cases skip).  Its value is a note for skip
reasons ("" when swap is active).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def wp_swap(swap_setup) -> str:
    return swap_setup.note
