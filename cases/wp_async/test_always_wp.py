"""e2b's TestAsyncWriteProtection matrix: operation sequences over 4 pages, the handler
installing pages with UFFDIO_COPY_MODE_WP on read faults (e2b's default) or on every fault
("always WP", e2b PR #2461), on a uffd with or without UFFD_FEATURE_WP_ASYNC.

Kernel behaviour pinned (e2b-dev/infra's always-WP tests; Documentation/admin-guide/mm/
userfaultfd.rst): UFFDIO_COPY with MODE_WP installs the page present with pagemap bit 57 set,
also on a uffd without WP_ASYNC; a later write traps with the WP flag (sync) or is resolved in
the kernel without a message and clears bit 57 (WP_ASYNC); a write fault served with MODE_WP
still ends dirty.  Per page, after the sequence: written -> present with bit 57 clear
("dirty"); only read -> present with bit 57 set ("clean"); untouched -> not present.  Also:
one MISSING fault per touched page, WP faults only in sync mode and exactly for the written
pages that had been installed protected, every read returns the source page.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cases.wp_async.backings import WpBacking
from lib import check
from lib.kernel import abi, libc, system, tasks
from lib.kernel.handler import Options, Source
from lib.kernel.memtypes import ANON, HUGETLB_ANON
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import served

NPAGES = 4
MARK = b"e2b-dirty-write!"

SEQUENCES: dict[str, list[tuple[str, int]]] = {
    "read then write": [("r", 0), ("w", 0)],
    "write then read": [("w", 0), ("r", 0)],
    "write to missing page 0": [("w", 0)],
    "write to missing page 2": [("w", 2)],
    "all reads (all clean)": [("r", 0), ("r", 1), ("r", 2), ("r", 3)],
    "interleaved": [("r", 0), ("w", 1), ("r", 2), ("w", 3)],
    "read write read": [("r", 1), ("w", 1), ("r", 1)],
    "write all then read all": [("w", i) for i in range(NPAGES)] + [("r", i) for i in range(NPAGES)],
    "selective write among reads": [("r", i) for i in range(NPAGES)] + [("w", 2)],
    "alternating": [("r", 0), ("w", 0), ("r", 0), ("w", 0), ("w", 3), ("r", 3), ("w", 3)],
}

PAGES = {"4k": WpBacking(ANON), "hugepage": WpBacking(HUGETLB_ANON, 2 * system.MiB)}  # e2b's names: anon, hugetlb-anon
POLICIES = {"WP on reads": Options(copy_mode_wp_reads=True), "always WP": Options(copy_mode_wp=True)}
MODES = ("sync", "WP_ASYNC")


@dataclass(frozen=True)
class Arm:
    seq: str
    page: str
    policy: str
    mode: str

    @property
    def backing(self) -> WpBacking:
        return PAGES[self.page]

    def prepare(self, settings) -> None:
        self.backing.prepare(settings)

    def __str__(self) -> str:
        return f"e2b {self.seq} on {self.page} ({self.policy}, {self.mode})"


ARMS = [Arm(s, p, pol, m) for p in PAGES for pol in POLICIES for m in MODES for s in SEQUENCES]


# -- the oracle, as plain functions ---------------------------------------------------------
def expected_states(ops: list[tuple[str, int]], npages: int = NPAGES) -> list[str]:
    """Replay: 'missing' (untouched), 'clean' (only read), 'dirty' (written at least once)."""
    st = ["missing"] * npages
    for op, i in ops:
        if op == "w":
            st[i] = "dirty"
        elif st[i] == "missing":
            st[i] = "clean"
    return st


def observed_states(entries) -> list[str]:
    """checkDirtiness: present & bit 57 clear = dirty; present & set = clean; else missing."""
    return ["missing" if not e.present else ("clean" if e.uffd_wp else "dirty") for e in entries]


def expected_wp_faults(ops: list[tuple[str, int]], always_wp: bool, sync: bool) -> int:
    """Written pages that were installed protected (each traps once) -- in sync mode only."""
    if not sync:
        return 0
    first: dict[int, str] = {}
    written = set()
    for op, i in ops:
        first.setdefault(i, op)
        if op == "w":
            written.add(i)
    return sum(1 for i in written if first[i] == "r" or always_wp)


def run_sequence(b: WpBacking, ops, options: Options, sync: bool):
    """Run ``ops`` against a served region; returns (entries, stats, read_mismatches, final)."""
    unit = b.page_size
    r = b.map(NPAGES)
    src = Source(r.size, pattern=0xE2B)
    features = b.wp_feature | b.missing_feature | (0 if sync else int(abi.Feature.WP_ASYNC))
    bad_reads = []
    with served(r, "thread", features, abi.RegisterMode.MISSING | abi.RegisterMode.WP, src, options) as s:
        written: set[int] = set()
        for op, i in ops:
            addr = r.page(i)
            if op == "r":
                want = src.page(i, unit)
                if i in written:
                    want = MARK + want[len(MARK):]
                if libc.read(addr, unit) != want:
                    bad_reads.append(i)
            else:
                libc.write(addr, MARK)
                written.add(i)
        # the handler counts a fault after the ioctl that woke the toucher: wait for the tally
        st = tasks.wait_until(lambda: _settled(s.stats()), 5, "the handler to account every fault")
        with Pagemap() as pm:
            entries = pm.entries(r.addr, NPAGES, unit)
        final = [libc.read(r.page(i), 64) if e.present else b"" for i, e in enumerate(entries)]
        want_final = [MARK + src.page(i, unit)[len(MARK):64] for i in range(NPAGES)]
    return entries, st, bad_reads, final, want_final


def _settled(st):
    return st if len(st.faults) == st.missing + st.wp + len(st.errors) else None


def check_sequence(arm: Arm, entries, st, bad_reads, final, want_final) -> None:
    ops = SEQUENCES[arm.seq]
    want = expected_states(ops)
    check.eq(st.errors, [], "handler errors")
    check.eq(observed_states(entries), want, "per-page state from pagemap (dirty/clean/missing)")
    check.eq(bad_reads, [], "pages whose read did not return the source content")
    check.eq(st.missing, sum(1 for s in want if s != "missing"), "MISSING faults (one per touched page)")
    check.eq(st.wp, expected_wp_faults(ops, arm.policy == "always WP", arm.mode == "sync"), "WP faults seen")
    for i, s in enumerate(want):
        if s == "dirty":
            check.eq(final[i], want_final[i], f"page {i} content after the write")


@pytest.mark.parametrize("arm", ARMS, ids=[str(a) for a in ARMS])
def test_e2b_sequence(arm: Arm) -> None:
    b = arm.backing
    feats = b.missing_feature | (0 if arm.mode == "sync" else int(abi.Feature.WP_ASYNC))
    b.require(feats, units=NPAGES)
    opts = Options(**vars(POLICIES[arm.policy]))
    result = run_sequence(b, SEQUENCES[arm.seq], opts, arm.mode == "sync")
    check_sequence(arm, *result)
