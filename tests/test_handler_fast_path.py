"""The serve loop's inline resolver (lib.handler.FaultServer._inline_resolver) against the
general path (_batch -> _resolve): the same messages must give the same ioctls, statistics and
log, whatever the options and whatever the kernel answers (EEXIST, EAGAIN, other errors).

The inline resolver exists only for speed (bench/fault_service.py); the general path is the
specification.  A FakeUffd records the resolving ioctls that took effect and fails the ones a
script tells it to.  The last test is the comparison's negative control: a handler that differs
(the wrong-page control) must be told apart.
"""

from __future__ import annotations

import errno

import pytest

from lib import abi
from lib.handler import FaultServer, Options, Stats
from lib.uffd import UffdError

BASE = 0x7F0000000000
SRC = 0x7E0000000000
PAGE = 4096
HPAGE = 2 << 20
PF, REMOVE = int(abi.Event.PAGEFAULT), int(abi.Event.REMOVE)
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

    def _maybe_fail(self, addr: int, call: str) -> None:
        pending = self.fail.get((addr - BASE) // self.ps)
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
    return (PF, WRITE if write else 0, BASE + page * ps + offset, 4242)


def wp_fault(page: int, ps: int) -> tuple[int, int, int, int]:
    return (PF, WP | WRITE, BASE + page * ps + 16, 4243)


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
    ]


FAILS = {4: [errno.EEXIST], 5: [errno.EAGAIN], 6: [errno.ENOENT], 9: [errno.ENOENT]}


def run(ps: int, opts: dict, inline: bool, source: int = SRC) -> tuple[list[tuple], Stats]:
    u = FakeUffd(ps, FAILS)
    srv = FaultServer(u, BASE, NPAGES * ps, ps, source, Options(**opts))
    resolve = srv._inline_resolver(u) if inline else None
    if inline:
        assert resolve is not None, "these options should take the inline path"
    for words in script(ps):
        srv._dispatch(u, words, resolve)
    st = srv.snapshot()
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


def test_comparison_tells_a_different_handler_apart():
    """Negative control: the wrong-page handler serves other source pages; the comparison sees it."""
    fast_effects, _ = run(PAGE, {}, True)
    wrong_effects, _ = run(PAGE, {"wrong_page": True}, False)
    assert fast_effects != wrong_effects
