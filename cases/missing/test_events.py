"""events and events-wp, as uffd-unit-tests (non-cooperative userfaultfd).

The area is registered MISSING (plus WP for events-wp, pages installed write-protected) on a
uffd with EVENT_FORK, EVENT_REMAP and EVENT_REMOVE; the monitor runs in its own process
(lib.kernel.handler's FaultServer: it serves the child's mm through the uffd that arrives in the FORK
message).  A forked child ("faulting process"):

1. reads and writes back the counters of the first half of the pages (missing faults, served
   by COPY from the source through the child's uffd; with wp the write-back is a WP fault);
2. mremaps the area onto another address (REMAP event; the monitor follows the move);
3. does the same on the second half at the new address;
4. releases the pages (MADV_DONTNEED or MADV_REMOVE: a REMOVE event);
5. checks that every byte now reads zero.

Checked: the child's verdict; before the release every page took exactly one MISSING fault
(and one WP fault with wp), none with the WRITE flag; the monitor saw FORK, REMAP (old -> new,
whole length) and REMOVE covering the area, in that order.
"""

from __future__ import annotations

import types
from collections import Counter

import pytest

from cases.missing import support
from lib import check
from lib.check import note
from lib.kernel import abi, handler, libc
from lib.kernel.memtypes import MemType, mem_types
from lib.kernel.serve import flush, served
from lib.kernel.tasks import CommPipes

MEMS = mem_types()
EVENT_FEATURES = abi.Feature.EVENT_FORK | abi.Feature.EVENT_REMAP | abi.Feature.EVENT_REMOVE


def faulting_process(a: support.Area, pipes: CommPipes) -> None:
    half = (a.npages + 1) // 2

    def touch(nr: int, base: int) -> None:
        count = support.read_count(a.count_addr(nr, base))
        if count != a.count_verify[nr]:
            raise AssertionError(f"nr {nr} memory corruption {count} {a.count_verify[nr]}")
        support.write_count(a.count_addr(nr, base), count)  # a WP fault where installed protected

    for nr in range(half):
        touch(nr, a.dst.addr)
    new = libc.mremap(a.dst.addr, a.size, a.size, abi.MREMAP_MAYMOVE | abi.MREMAP_FIXED, a.src.addr)
    for nr in range(half, a.npages):
        touch(nr, new)
    pipes.child_ready.signal()
    pipes.parent_ready.wait(30)
    a.release(new)
    for nr in range(a.npages):
        if not support.is_zero(a.page(nr, new), a.page_size):
            raise AssertionError(f"page {nr} is not zero after the release")


def page_counts(faults: list[dict], a: support.Area, new_base: int, flag: int, want: bool) -> Counter:
    c: Counter = Counter()
    for f in faults:
        if bool(f["flags"] & flag) != want:
            continue
        addr = f["address"]
        for base in (a.dst.addr, new_base):
            if base <= addr < base + a.size:
                c[(addr - base) // a.page_size] += 1
    return c


def run_events(mt: MemType, wp: bool, options: handler.Options | None = None) -> None:
    feats = support.features_for(mt, EVENT_FEATURES, mt.wp_feature if wp else 0)
    mode = abi.RegisterMode.MISSING | (abi.RegisterMode.WP if wp else 0)
    opts = options or handler.Options(reject_write_missing=True, copy_mode_wp=wp)
    with support.make_area(mt, alias=False) as a:
        src = types.SimpleNamespace(addr=a.src.addr, size=a.size)
        with served(a.dst, "process", feats, mode, source=src, options=opts) as s:
            pipes = CommPipes()
            child = support.Child(lambda: faulting_process(a, pipes))
            note(f"waiting for the faulting process {child.pid} to touch every page")
            pipes.child_ready.wait(30)
            before = s.stats()
            pipes.parent_ready.signal()
            err = child.finish(60)
            flush(s.handler)  # the child's last events were read, maybe not yet recorded
            after = s.stats()
        check.eq(err, "", "faulting process")
        check.eq(after.errors, [], "monitor errors")
        missing = page_counts(before.faults, a, a.src.addr, abi.PagefaultFlag.WP, False)
        check.eq(sorted(missing.items()), [(nr, 1) for nr in range(a.npages)],
                 "MISSING faults per page before the release")
        writes = [f for f in before.faults if f["flags"] == abi.PagefaultFlag.WRITE]
        check.eq(writes, [], "MISSING faults with the WRITE flag")
        if wp:
            wps = page_counts(before.faults, a, a.src.addr, abi.PagefaultFlag.WP, True)
            check.eq(sorted(wps.items()), [(nr, 1) for nr in range(a.npages)], "WP faults per page")
        kinds = [e["event"] for e in after.events]
        check.eq(kinds[:2], ["FORK", "REMAP"], "first events")
        remap = after.events[1]
        check.eq((remap["from"], remap["to"], remap["len"]), (a.dst.addr, a.src.addr, a.size), "REMAP event")
        removes = [e for e in after.events[2:] if e["event"] == "REMOVE"]
        check.eq(len(removes) + 2, len(kinds), "events after REMAP are all REMOVE")
        covered = sorted((e["start"], e["end"]) for e in removes)
        check.true(covered and covered[0][0] <= a.src.addr and max(e for _, e in covered) >= a.src.addr + a.size,
                   f"REMOVE events {[(hex(s_), hex(e)) for s_, e in covered]} cover the released area")


@pytest.mark.parametrize("mt", MEMS, ids=[f"events on {m}" for m in MEMS])
def test_events(mt: MemType) -> None:
    support.need_type(mt, EVENT_FEATURES)
    run_events(mt, wp=False)


@pytest.mark.parametrize("mt", MEMS, ids=[f"events-wp on {m}" for m in MEMS])
def test_events_wp(mt: MemType) -> None:
    support.need_type(mt, EVENT_FEATURES | mt.wp_feature)
    run_events(mt, wp=True)
