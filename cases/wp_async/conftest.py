"""Fixtures of the write-protect area (pytest process).

``wp_swap``: where no swap is active, a temporary zram swap device (lib.kernel.swap, the facility
the COW area uses too) for the MADV_PAGEOUT + swap-in cases; removed at the end of the run
(journalled against SIGKILL).  ``--kmm-no-swap-setup`` turns it off and those cases skip.
Its value is a note for skip reasons ("" when swap is active).
"""

from __future__ import annotations

import pytest

from lib.kernel import swap, system


@pytest.fixture(scope="session")
def wp_swap(request: pytest.FixtureRequest):
    if request.config.getoption("--kmm-no-swap-setup"):
        yield "temporary swap set-up turned off (--no-swap-setup)"
        return
    if system.swap_active():
        yield ""
        return
    try:
        dev = swap.create()
    except swap.SwapError as e:
        yield f"no temporary swap: {e}"
        return
    try:
        yield ""
    finally:
        failed = swap.remove(dev)
        if failed:
            raise RuntimeError("could not remove the temporary swap device: " + "; ".join(failed))
