"""Writers of the e2b write loads whose every write can be checked afterwards.

A write load (cases/missing/test_e2b.py) hammers one userfault-registered page with writes
from one or several threads.  Copying the handler's own source page in, as e2b does, leaves
nothing to check: the page reads the same whether or not a write landed.  Here each writer
owns a slice of the page (``SLOTS`` 8-byte slots, ``STRIDE`` bytes apart, so the bytes between
slices are never written) and its op k stores a tag naming the writer and k into slot
k % SLOTS.  What the kernel must preserve is then exact:

* after each full round of ``SLOTS`` ops the writer's slice holds that round's tags (checked
  by the writer itself: a write lost or overwritten during the load shows here);
* after the load, the page holds each writer's last round of tags in its slice and the
  handler's source bytes everywhere else (:func:`expected_page`, :func:`differences`).

Every access goes through lib.kernel.libc (C calls that release the GIL, docs/ARCHITECTURE.md rule 1).
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field

from lib.kernel import libc

SLOTS = 32  # 8-byte slots a writer owns
SLICE = SLOTS * 8
STRIDE = 2 * SLICE  # a writer's slice, then as many bytes nobody writes
TAG_BASE = 0xE2B0


def tag(ident: int, k: int) -> int:
    return ((TAG_BASE + ident) << 48) | k


@dataclass
class Writer:
    """Writer ``ident`` of a load: ``n`` ops on the page, slice at ident * STRIDE."""

    ident: int
    n: int
    bad_rounds: list[int] = field(default_factory=list)  # rounds whose tags did not all hold
    _tags: array.array = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t0 = tag(self.ident, 0)
        self._tags = array.array("Q", range(t0, t0 + max(self.n, 1)))  # tag(ident, k) at index k

    @property
    def offset(self) -> int:
        return self.ident * STRIDE

    # one write: store(slot address, tag address, 8); the negative controls override it
    store = libc._memcpy

    def run(self, page: int) -> None:
        base, tags = page + self.offset, self._tags.buffer_info()[0]
        store, cmp = self.store, libc._memcmp
        for k in range(self.n):
            store(base + (k % SLOTS) * 8, tags + 8 * k, 8)
            if k % SLOTS == SLOTS - 1 and cmp(base, tags + 8 * (k - SLOTS + 1), SLICE) != 0:
                self.bad_rounds.append(k // SLOTS)

    def final_slots(self) -> dict[int, int]:
        """slot -> the tag it must hold after the load (the last op on each slot)."""
        return {k % SLOTS: tag(self.ident, k) for k in range(max(0, self.n - SLOTS), self.n)}


def expected_page(source: bytes, writers: list[Writer]) -> bytes:
    """The page after the load: the source bytes, with each writer's final slots."""
    out = bytearray(source)
    for w in writers:
        for slot, t in w.final_slots().items():
            o = w.offset + slot * 8
            out[o:o + 8] = t.to_bytes(8, "little")
    return bytes(out)


def differences(actual: bytes, source: bytes, writers: list[Writer], limit: int = 4) -> list[str]:
    """Where the page differs from expected_page, named: a writer's slot or the source bytes."""
    want = expected_page(source, writers)
    owner = {w.offset + s * 8: (w, s) for w in writers for s in w.final_slots()}
    out: list[str] = []
    for o in range(0, len(want), 8):
        if actual[o:o + 8] == want[o:o + 8]:
            continue
        got = int.from_bytes(actual[o:o + 8], "little")
        exp = int.from_bytes(want[o:o + 8], "little")
        if o in owner:
            w, s = owner[o]
            out.append(f"writer {w.ident} slot {s} (offset {o}): expected its tag {exp:#x}, got {got:#x}")
        else:
            out.append(f"offset {o} (not written): expected the handler's source bytes {exp:#x}, got {got:#x}")
    if len(out) > limit:
        out = [*out[:limit], f"... {len(out) - limit} more 8-byte words differ"]
    return out


def load_writers(threads: int, per_thread: int, prefault: bool,
                 cls: type[Writer] = Writer) -> tuple[Writer | None, list[Writer]]:
    """(prefault writer or None, load writers): writers 0..threads-1 do the load, writer
    ``threads`` the single prefaulting write.  ``cls``: a Writer subclass (negative controls)."""
    pre = cls(threads, 1) if prefault else None
    return pre, [cls(i, per_thread) for i in range(threads)]
