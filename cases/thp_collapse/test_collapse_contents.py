"""A collapse of a partially populated range fills the holes with zeros and keeps every
populated page's contents.

Documentation/admin-guide/mm/transhuge.rst: khugepaged (up to max_ptes_none) and
MADV_COLLAPSE (always) collapse ranges with unmapped PTEs, "allocating new pages" for them:
after the collapse every page of the range is present; the holes read as zeros.  Checked page
by page: presence (pagemap) before and after, each populated page's own marker, each hole
all zero bytes.
"""

import struct

import pytest

from cases.thp_collapse import contexts, matrix, regions
from cases.thp_collapse.matrix import ANON, PAGE_SIZE, SHMEM, Variant
from lib.kernel import libc
from lib.kernel.pagemap import Pagemap

EVERY = 3  # pages 0, 3, 6, ... are populated
MAGIC = 0x6B6D6D2D636F6C6C


def marker(i: int) -> bytes:
    return struct.pack("<QQ", i, MAGIC)


def populate_sparse(addr: int, npages: int, every: int = EVERY) -> set[int]:
    """Write a page-specific marker into every ``every``-th page; returns their indices."""
    done = set(range(0, npages, every))
    for i in sorted(done):
        libc.write(addr + i * PAGE_SIZE, marker(i))
    return done


def check_filled(addr: int, npages: int, populated: set[int]) -> None:
    """Oracle: every page present; populated pages keep their marker; holes are all zeros."""
    with Pagemap() as pm:
        absent = [i for i, e in enumerate(pm.entries(addr, npages)) if not e.present]
    if absent:
        raise AssertionError(f"{len(absent)} page(s) not present after the collapse, first {absent[:8]}")
    data = libc.read(addr, npages * PAGE_SIZE)
    zero = bytes(PAGE_SIZE)
    for i in range(npages):
        page = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        if i in populated:
            want = marker(i) + bytes(PAGE_SIZE - 16)
            if page != want:
                raise AssertionError(f"populated page {i} changed: starts {page[:16].hex()}")
        elif page != zero:
            nz = next(k for k, b in enumerate(page) if b)
            raise AssertionError(f"hole {i} not zero-filled: byte {nz} is {page[nz]:#x}")


def check_presence(addr: int, npages: int, populated: set[int], what: str) -> None:
    with Pagemap() as pm:
        present = {i for i, e in enumerate(pm.entries(addr, npages)) if e.present}
    if present != populated:
        raise AssertionError(f"{what}: present pages {len(present)}, expected exactly the {len(populated)} populated")


@pytest.mark.parametrize("v", matrix.params("collapse fills holes with zeros", mems=(ANON, SHMEM)))
def test_collapse_fills_holes(v: Variant) -> None:
    matrix.require(v)
    area = regions.setup_area(v.mem, v.size)
    populated = populate_sparse(area.addr, v.nr)
    check_presence(area.addr, v.nr, populated, "before the collapse")
    contexts.collapse(v, area, 1, True, "Collapse a range with every third page populated")
    check_filled(area.addr, v.nr, populated)
