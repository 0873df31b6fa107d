"""Fixtures of the COW area (all run in the pytest process, once per run).

* ``cow_swap``: where no swap is active, a temporary zram swap device for the swapped-out
  variants (lib.kernel.swap), removed at the end of the run (also after Ctrl-C/SIGTERM: session
  teardown; after SIGKILL: the journal, replayed by the next run).  ``--kmm-no-swap-setup``
  turns it off; the swapped variants then skip as cow.c's do.  Requested only by cases
  whose backing swaps, so a run without them never touches swap.
* ``gup_test``: the gup_test debugfs file, probed once (cases.cow.gup).
"""

from __future__ import annotations

import pytest

from cases.cow import backings, gup
from lib.kernel import swap, system


@pytest.fixture(scope="session")
def cow_swap(request: pytest.FixtureRequest):
    if request.config.getoption("--kmm-no-swap-setup"):
        backings.SWAP_STATE["note"] = "temporary swap set-up turned off (--no-swap-setup)"
        yield None
        return
    if system.swap_active():
        backings.SWAP_STATE["note"] = ""
        yield None
        return
    try:
        dev = swap.create()
    except swap.SwapError as e:
        backings.SWAP_STATE["note"] = f"no temporary swap: {e}"
        yield None
        return
    backings.SWAP_STATE["note"] = f"temporary swap {dev.describe()}"
    try:
        yield dev
    finally:
        failed = swap.remove(dev)
        if failed:
            raise RuntimeError("could not remove the temporary swap device: " + "; ".join(failed))


@pytest.fixture(autouse=True)
def _swap_for_swapped_variants(request: pytest.FixtureRequest) -> None:
    cs = getattr(request.node, "callspec", None)
    if cs is not None and any(getattr(v, "swap", False) for v in cs.params.values()):
        request.getfixturevalue("cow_swap")


@pytest.fixture(scope="session")
def gup_test():
    g = gup.probe()
    try:
        yield g
    finally:
        g.close()
