"""Fixtures every case area may use (pytest process; registered by the root conftest.py).

* ``settings``: changes knobs for one case and puts them back after it (docs/ARCHITECTURE.md
  rule 6); the run-wide journal (lib.kernel.system.SETTINGS) repairs what a killed run left.
* parameters with a ``prepare(settings)`` method get it called before their case.
* ``swap_setup``: the run's swap (:class:`SwapSetup`): where no swap is active, a temporary zram swap
  device (lib.kernel.swap), set up on the first request and removed at the end of the run (also
  after Ctrl-C/SIGTERM: session teardown; after SIGKILL: its journal, replayed by the next run,
  lib.runner.plugin).  ``--kmm-no-swap-setup`` turns it off; the cases that need swap then skip
  (cow.c's swapped variants do the same without swap).  Only cases that need swap request it,
  so a run without them never touches swap.
* ``gup_test``: the gup_test debugfs file (:class:`lib.kernel.gup_test.GupTest`), probed once per
  run (cow, gup_longterm); debugfs mounted only to look is unmounted again at once, or at the end
  of the run when the file is there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lib.kernel import gup_test as gup
from lib.kernel import swap as swapdev
from lib.kernel import system
from lib.runner.plugin import is_case


class CaseSettings:
    """Settings changed for one case: the values before the case come back after it.

    Only usable in the pytest process (fixtures, ``prepare`` hooks): a change made inside the
    case's forked process would escape the journal, so it is refused.
    """

    def __init__(self) -> None:
        self.before: dict[str, str] = {}
        self.pid = os.getpid()

    def set(self, path: str, value: str | int) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError("settings must be changed in a fixture or prepare(), not in the case body")
        if not system.is_root():
            pytest.skip(f"needs root to write {path}")
        if path not in self.before:
            try:
                self.before[path] = system.Settings.read(path)
            except OSError as e:
                pytest.skip(f"cannot read {path}: {e.strerror}")
        try:
            system.SETTINGS.set(path, value)
        except system.SettingsError as e:
            pytest.skip(str(e))

    def thp(self, relpath: str, value: str | int) -> None:
        self.set(f"{system.THP}/{relpath}", value)

    def thp_only_size(self, size: int, mode: str = "always") -> None:
        """Enable one anon THP size, disable the others (cow.c's run_with_thp)."""
        if size not in system.thp_sizes():
            pytest.skip(f"THP size {system.size_label(size)} not offered by this kernel")
        for s in system.thp_sizes():
            rel = f"hugepages-{s // system.KiB}kB/enabled"
            if os.path.exists(f"{system.THP}/{rel}"):
                self.thp(rel, mode if s == size else "never")
        if system.thp_enabled_global() == "never":
            self.thp("enabled", "madvise")

    def hugetlb(self, size: int, count: int) -> None:
        """At least ``count`` free pages of ``size`` (kept for the run, restored at its end)."""
        if not system.is_root():
            if system.hugetlb_counter(size, "free_hugepages") >= count:
                return
            pytest.skip(f"needs root to grow the {system.size_label(size)} hugetlb pool")
        try:
            system.SETTINGS.ensure_hugetlb(size, count)
        except system.SettingsError as e:
            pytest.skip(str(e))

    def restore(self) -> None:
        for path, value in reversed(self.before.items()):
            try:
                if system.Settings.read(path) != value:
                    with open(path, "w") as f:
                        f.write(value)
            except OSError:
                pass


@pytest.fixture
def settings():
    s = CaseSettings()
    try:
        yield s
    finally:
        s.restore()


@pytest.fixture(autouse=True)
def _prepare_params(request: pytest.FixtureRequest):
    """Parameters with a ``prepare(settings)`` method get it called before the case, in the
    pytest process (hugetlb pools, THP sizes); what they change is put back after the case."""
    cs = getattr(request.node, "callspec", None)
    preparers = [v for v in (cs.params.values() if cs else ()) if hasattr(v, "prepare")]
    if not preparers or not is_case(request.node):
        yield
        return
    s = CaseSettings()
    try:
        for v in preparers:
            v.prepare(s)
        yield
    finally:
        s.restore()


@dataclass
class SwapSetup:
    """The run's swap: the temporary device this run set up (None when swap was active already
    or none could be set up), and why there is no swap ('' when swap is active)."""

    device: swapdev.TempSwap | None
    note: str

    @property
    def active(self) -> bool:
        return system.swap_active()


NO_SETUP = "temporary swap set-up turned off (--no-swap-setup)"


@pytest.fixture(scope="session")
def swap_setup(request: pytest.FixtureRequest) -> Iterator[SwapSetup]:
    """Swap for the cases that swap pages out (MADV_PAGEOUT): the active swap, else a temporary
    zram device for the rest of the run."""
    if request.config.getoption("--kmm-no-swap-setup", default=False):
        yield SwapSetup(None, NO_SETUP)
        return
    if system.swap_active():
        yield SwapSetup(None, "")
        return
    try:
        dev = swapdev.create()
    except swapdev.SwapError as e:
        yield SwapSetup(None, f"no temporary swap: {e}")
        return
    try:
        yield SwapSetup(dev, "")
    finally:
        failed = swapdev.remove(dev)
        if failed:
            raise RuntimeError("could not remove the temporary swap device: " + "; ".join(failed))


@pytest.fixture(scope="session")
def gup_test() -> Iterator[gup.GupTest]:
    """The gup_test file for longterm-pin cases (cow.c, gup_longterm.c), probed once per run."""
    g = gup.probe()
    try:
        yield g
    finally:
        g.close()
