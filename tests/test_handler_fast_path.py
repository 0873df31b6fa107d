"""The serve loop's inline resolver (lib/kernel/handler/fast_path.py, built by FaultServer._inline_resolver) against the
general path (_batch -> _resolve): the same messages must give the same ioctls, statistics and
log, whatever the options and whatever the kernel answers (EEXIST, EAGAIN, other errors).

The inline resolver exists only for speed (bench/fault_service.py); the general path is the
specification.  Both must also book a fault only once its install succeeded (what was booked
at each ioctl's entry is compared, and the pre-issue-13 ordering is told apart), and, with
``step_delays``, hit the same test-hook steps in the same order (none without).  A FakeUffd
records the resolving ioctls that took effect and fails the ones a script tells it to.  The
comparisons' negative controls: a handler that differs (the wrong-page control) and the
pre-issue-13 booking order must be told apart.
"""

from __future__ import annotations

import errno

import pytest

from lib.kernel import abi
from lib.kernel.handler.options import (
    AFTER_CHOOSE,
    AFTER_INSTALL,
    AFTER_MARK,
    BEFORE_LOCK,
    BEFORE_RESOLVE,
    STEPS,
    Options,
    Stats,
)
from lib.kernel.handler.serve_loop import FaultServer
from lib.kernel.uffd import UffdError

BASE = 0x7F0000000000
SRC = 0x7E0000000000
PAGE = 4096
HPAGE = 2 << 20
PAGEFAULT, REMOVE = int(abi.Event.PAGEFAULT), int(abi.Event.REMOVE)
WRITE, WP = int(abi.PagefaultFlag.WRITE), int(abi.PagefaultFlag.WP)
NPAGES = 10


class FakeUffd:
    """Resolving ioctls recorded when they take effect; ``fail[page]`` lists the errnos the
    next calls for that page raise (EEXIST stays: the page exists from then on)."""

    def __init__(self, ps: int, fail: dict[int, list[int]] | None = None) -> None:
        self.ps = ps
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.effects: list[tuple] = []
        self.fd = -1
        self.features = 0
        self.server: FaultServer | None = None
        self.booked_at_entry: list[tuple] = []  # (call, page, the page's booked state) per ioctl

    def _maybe_fail(self, addr: int, call: str) -> None:
        page = (addr - BASE) // self.ps
        if self.server is not None:
            st = self.server.stats
            self.booked_at_entry.append((call, page, st.states.get(page), st.missing, st.wp))
        pending = self.fail.get(page)
        if pending:
            err = pending[0] if pending[0] == errno.EEXIST else pending.pop(0)
            raise UffdError(err, call, -err)

    def copy(self, dst, src, length, mode=0):
        self._maybe_fail(dst, "UFFDIO_COPY")
        self.effects.append(("copy", dst, src, length, int(mode)))
        return length

    def zeropage(self, addr, length, mode=0):
        self._maybe_fail(addr, "UFFDIO_ZEROPAGE")
        self.effects.append(("zeropage", addr, length, int(mode)))
        return length

    def wake(self, addr, length):
        self.effects.append(("wake", addr, length))

    def writeprotect(self, addr, length, protect, dontwake=False):
        self._maybe_fail(addr, "UFFDIO_WRITEPROTECT")
        self.effects.append(("writeprotect", addr, length, protect, dontwake))

    def wait(self, timeout):  # _read_pending: nothing else is queued in these scripts
        return False


def fault(page: int, ps: int, write: bool = False, offset: int = 8) -> tuple[int, int, int, int]:
    return (PAGEFAULT, WRITE if write else 0, BASE + page * ps + offset, 4242)


def wp_fault(page: int, ps: int) -> tuple[int, int, int, int]:
    return (PAGEFAULT, WP | WRITE, BASE + page * ps + 16, 4243)


def remove(first: int, last: int, ps: int) -> tuple[int, int, int, int]:
    return (REMOVE, BASE + first * ps, BASE + last * ps, 0)


def script(ps: int) -> list[list[tuple[int, int, int, int]]]:
    """Batches as read(2) would return them."""
    return [
        [fault(0, ps)],
        [fault(1, ps, write=True)],
        [fault(2, ps), fault(3, ps, write=True)],  # two faults in one read
        [remove(1, 3, ps)],
        [fault(1, ps)],  # removed: zeros from now on
        [fault(2, ps, write=True)],
        [remove(0, 1, ps), fault(0, ps)],  # a REMOVE in the batch: the general path in both
        [fault(4, ps)],  # EEXIST (scripted)
        [fault(5, ps, write=True)],  # EAGAIN once (scripted)
        [fault(6, ps)],  # ENOENT once (scripted): recorded as an error, not retried
        [fault(7, ps, write=True, offset=ps - 1)],
        [wp_fault(0, ps)],  # write-protect faults, alone and mixed with a MISSING one
        [wp_fault(7, ps), fault(8, ps, write=True)],
        [wp_fault(9, ps)],  # ENOENT once (scripted)
        [fault(1, ps), fault(2, ps, write=True)],  # removed pages stay zeros (the mark is never cleared)
    ]


FAILS = {4: [errno.EEXIST], 5: [errno.EAGAIN], 6: [errno.ENOENT], 9: [errno.ENOENT]}


def run(ps: int, opts: dict, inline: bool, source: int = SRC, trace: list | None = None,
        entry: list | None = None) -> tuple[list[tuple], Stats]:
    """The script through one path; ``trace`` collects the step hooks hit (with step_delays
    set), ``entry`` what was booked when each ioctl was entered."""
    u = FakeUffd(ps, FAILS)
    srv = FaultServer(u, BASE, NPAGES * ps, ps, source, Options(**opts))
    if entry is not None:
        u.server = srv
    if trace is not None:
        srv._step = lambda point, page: trace.append((point, page))  # before the resolver is built
    resolve = srv._inline_resolver(u) if inline else None
    if inline:
        assert resolve is not None, "these options should take the inline path"
    for words in script(ps):
        srv._dispatch(u, words, resolve)
    st = srv.snapshot()
    if entry is not None:
        entry.extend(u.booked_at_entry)
    zeros = srv._zeros
    # the zero buffer's address differs between the two servers: name it
    effects = [tuple("zeros" if (i == 2 and e[0] == "copy" and v == zeros) else v for i, v in enumerate(e))
               for e in u.effects]
    return effects, st


OPTIONS = {
    "default": {},
    "zero": {"zero": True},
    "copy-mode-wp": {"copy_mode_wp": True},
    "copy-mode-wp-reads": {"copy_mode_wp_reads": True},
    "no-zeropage-ioctl": {"use_zeropage_ioctl": False},
}


@pytest.mark.parametrize("ps", [PAGE, HPAGE], ids=["4k", "2m"])
@pytest.mark.parametrize("source", [SRC, 0], ids=["source", "no-source"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_inline_resolver_matches_the_general_path(name, source, ps):
    fast_effects, fast = run(ps, OPTIONS[name], True, source)
    slow_effects, slow = run(ps, OPTIONS[name], False, source)
    assert fast_effects == slow_effects
    assert fast == slow
    # and the script did exercise what it is meant to
    assert slow.eexist == 1 and slow.eagain == 1 and len(slow.errors) == 2 and slow.wp == 2
    assert any(e[0] == "wake" for e in slow_effects)
    # the REMOVEd pages 1 and 2 got zeros every time after it, the last batch included
    after = slow_effects[[i for i, e in enumerate(slow_effects) if e[1] == BASE + 3 * ps][-1] + 1:]
    assert all(e[0] == "zeropage" or e[2] == "zeros" for e in after if e[1] in (BASE + ps, BASE + 2 * ps))


@pytest.mark.parametrize("ps", [PAGE, HPAGE], ids=["4k", "2m"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_booking_follows_the_install_on_both_paths(name, ps):
    """At each ioctl's entry both paths have booked the same, and a page's first install finds
    it unbooked: a state (and its counter) is published only once the kernel has the page."""
    fast, slow = [], []
    run(ps, OPTIONS[name], True, SRC, entry=fast)
    run(ps, OPTIONS[name], False, SRC, entry=slow)
    assert fast == slow
    first = {}
    for call, page, state, _missing, _wp in slow:
        first.setdefault(page, (call, state))
    assert all(state is None for call, state in first.values() if call != "UFFDIO_WRITEPROTECT")


def test_booking_comparison_tells_the_old_order_apart():
    """Negative control: the pre-issue-13 ordering books before the ioctl; the check sees it."""
    fast, old = [], []
    run(PAGE, {}, True, SRC, entry=fast)
    run(PAGE, {"old_install_order": True}, False, SRC, entry=old)
    assert fast != old
    assert any(state is not None for call, page, state, *_ in old[:1])


ALL_STEPS = {"step_delays": dict.fromkeys(STEPS, 0.0)}


@pytest.mark.parametrize("ps", [PAGE, HPAGE], ids=["4k", "2m"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_step_hooks_match_on_both_paths(name, ps):
    """With step_delays the inline resolver is built with the hooks: both paths hit the same
    steps, for the same pages, in the same order, and still do the same ioctls."""
    opts = {**OPTIONS[name], **ALL_STEPS}
    fast_trace, slow_trace = [], []
    fast_effects, fast = run(ps, opts, True, SRC, trace=fast_trace)
    slow_effects, slow = run(ps, opts, False, SRC, trace=slow_trace)
    assert fast_trace == slow_trace and fast_effects == slow_effects and fast == slow
    hit = {p for p, _ in slow_trace}
    assert {BEFORE_LOCK, BEFORE_RESOLVE, AFTER_CHOOSE, AFTER_INSTALL, AFTER_MARK} <= hit


def test_no_hooks_without_step_delays():
    """Without step_delays the inline resolver calls the bare ioctls: no step is hit."""
    trace: list = []
    run(PAGE, {}, True, SRC, trace=trace)
    assert trace == []


def test_comparison_tells_a_different_handler_apart():
    """Negative control: the wrong-page handler serves other source pages; the comparison sees it."""
    fast_effects, _ = run(PAGE, {}, True)
    wrong_effects, _ = run(PAGE, {"wrong_page": True}, False)
    assert fast_effects != wrong_effects
