"""uffd-wp protection survives what the kernel does to the pages behind it.

- PTE-mapping a THP (mprotect of one subpage changes one PTE / splits the PMD mapping):
  every subpage keeps bit 57 and a write still traps (kernel fixes the e2b userfaultfd users depend on: uffd-wp
  lost on THP split/migration/VMA split were real bugs).
- MADV_PAGEOUT and swap-in: a swapped-out protected page keeps the bit in its swap entry
  (anon) or as a pte marker (shmem); swapping it back in by a read keeps it; a write traps.
  Needs swap: a temporary zram swap device is set up for the run (lib.kernel.swap) when none is
  active; otherwise these cases skip with "no swap".  hugetlb cannot be paged out.
- Page migration (move_pages(2)): fix 24bf08c4376b (6.3) made PMD migration entries carry
  uffd-wp, 44f86392bdd1 the hugetlb analogue.  A real migration needs a second NUMA node;
  move_pages to the node a page is already on is checked separately (a kernel no-op that
  must not disturb the protection).  Skips come from probes (swap, NUMA support and node
  count); a move_pages() that fails on a NUMA kernel is a failure.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from cases.wp_async.backings import WpBacking, backings
from cases.wp_async.support import check_sync_wp, protected, read_does_not_fault, sync_wp_write, wp_bits
from lib import check
from lib.kernel import abi, libc, pagemap, setup_step, system
from lib.kernel.pagemap import Pagemap

BACKINGS = backings()
THPS = [b for b in BACKINGS if b.thp]
MPOL_MF_MOVE = 2


@pytest.mark.parametrize("b", THPS, ids=[f"uffd-wp survives PTE-mapping of {b}" for b in THPS])
def test_pte_mapping(b: WpBacking) -> None:
    b.require()
    with protected(b, 1, 0x55) as (r, u):
        n = r.size // libc.PAGE_SIZE
        sub = r.addr + libc.PAGE_SIZE * (n // 2)
        libc.mprotect(sub, libc.PAGE_SIZE, abi.PROT_READ)
        libc.mprotect(sub, libc.PAGE_SIZE, abi.PROT_READ | abi.PROT_WRITE)
        check.eq(wp_bits(r, libc.PAGE_SIZE), [True] * n, "bit 57 of every subpage after mprotect of one")
        with Pagemap() as pm:
            order = pagemap.folio_order(pm.entry(r.addr).pfn or 0)
        check.diag(f"folio order after PTE-mapping: {order}")
        obs = sync_wp_write(u, sub + 8, libc.PAGE_SIZE, b"pte-mapped")
        check_sync_wp(obs, sub + 8, b"\x55" * 10, b"pte-mapped")
        bits = wp_bits(r, libc.PAGE_SIZE)
        check.eq(bits, [i != n // 2 for i in range(n)], "bit 57 after resolving one subpage")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"uffd-wp survives MADV_PAGEOUT and swap-in on {b}" for b in BACKINGS])
def test_pageout_swapin(b: WpBacking, wp_swap: str) -> None:
    if b.hugetlb:
        pytest.skip("hugetlb memory cannot be paged out (MADV_PAGEOUT rejects hugetlb VMAs)")
    b.require(units=2)
    if not system.swap_active():
        pytest.skip("no swap" + (f" ({wp_swap})" if wp_swap else ""))
    with protected(b, 2, 0x66) as (r, u):
        unit = libc.PAGE_SIZE
        n = r.size // unit
        libc.madvise(r.addr, r.size, abi.Madv.PAGEOUT)
        with Pagemap() as pm:
            swapped = [e.swapped for e in pm.entries(r.addr, n)]
        if not all(swapped):
            pytest.skip(f"MADV_PAGEOUT swapped out {sum(swapped)} of {n} pages (swap active)")
        check.eq(wp_bits(r, unit), [True] * n, "bit 57 of swapped-out pages (swap entry / pte marker)")
        finished, msgs = read_does_not_fault(u, r.addr, unit)
        check.true(finished and not msgs, "a read swaps the page in without a message")
        check.true(libc.is_filled(r.addr, 0x66, unit), "swapped-in content")
        with Pagemap() as pm:
            e = pm.entry(r.addr)
        check.true(e.present and e.uffd_wp, f"swapped-in page is present and protected ({e})")
        target = r.addr + (n - 1) * unit + 16
        obs = sync_wp_write(u, target, unit, b"swapped-write")
        check_sync_wp(obs, target, b"\x66" * 13, b"swapped-write")


def move_pages(addrs: list[int], nodes: list[int]) -> list[int]:
    n = len(addrs)
    pages = (ctypes.c_void_p * n)(*addrs)
    nds = (ctypes.c_int * n)(*nodes)
    status = (ctypes.c_int * n)(*([-1] * n))
    libc.syscall(abi.NR.move_pages, 0, n, ctypes.addressof(pages), ctypes.addressof(nds), ctypes.addressof(status),
                 MPOL_MF_MOVE)
    return list(status)


def _migrate_case(b: WpBacking, other_node: bool) -> None:
    b.require(units=2)
    if not os.path.isdir("/sys/devices/system/node"):
        pytest.skip("no NUMA support (CONFIG_NUMA off: no /sys/devices/system/node): move_pages(2) unavailable")
    nodes = system.numa_nodes()
    if other_node and len(nodes) < 2:
        pytest.skip(f"single NUMA node (nodes {nodes}): no page migration can be forced -- move_pages/"
                    "migrate_pages to the node a page is on are no-ops, and MADV_SOFT_OFFLINE would retire frames")
    with protected(b, 2, 0x77) as (r, u):
        unit = b.page_size
        n = r.size // unit
        with Pagemap() as pm:
            before = [e.pfn for e in pm.entries(r.addr, n, unit)]
        here = move_pages([r.addr], [nodes[0]])[0]
        target = nodes[0] if not other_node else next(x for x in nodes if x != here)
        with setup_step.required(f"move_pages of {n} units to node {target}"):
            status = move_pages([r.addr + i * unit for i in range(n)], [target] * n)
        check.eq(status, [target] * n, "move_pages status per unit (the node each page is on)")
        with Pagemap() as pm:
            after = [e.pfn for e in pm.entries(r.addr, n, unit)]
        moved = sum(1 for x, y in zip(before, after) if x != y)
        check.diag(f"move_pages to node {target}: {moved} of {n} units changed frame")
        if other_node:
            check.eq(moved, n, "units that changed frame (migrated)")
        check.eq(wp_bits(r, unit), [True] * n, "bit 57 per unit after move_pages")
        obs = sync_wp_write(u, r.addr + 32, unit, b"migrated")
        check_sync_wp(obs, r.addr + 32, b"\x77" * 8, b"migrated")


@pytest.mark.parametrize("b", BACKINGS, ids=[f"uffd-wp survives move_pages to its own node on {b}" for b in BACKINGS])
def test_move_pages_same_node(b: WpBacking) -> None:
    _migrate_case(b, other_node=False)


@pytest.mark.parametrize("b", BACKINGS, ids=[f"uffd-wp survives page migration on {b}" for b in BACKINGS])
def test_migration(b: WpBacking) -> None:
    _migrate_case(b, other_node=True)
