"""Unit tests of the COW area's library: matrix shape and names, snapshots, swap header."""

from __future__ import annotations

import json
import struct

import pytest

from cases.cow.backings import AnonBacking, NonAnonBacking, Snapshot, anon_backings, non_anon_backings
from lib.kernel import libc, memory, memtypes, swap, system
from lib.kernel.memtypes import MemType
from lib.runner.isolation import run_isolated
from tests import controls

K = 1024
M = K * K
THP = (16 * K, 32 * K, 64 * K, 128 * K, 256 * K, 512 * K, M, 2 * M)
HUGETLB = (2 * M, 1024 * M)


def test_anon_backings_follow_cow_c_count_and_order() -> None:
    b = anon_backings(THP, HUGETLB, 2 * M)
    assert len(b) == 2 + len(HUGETLB) + 6 * len(THP) + 2  # cow.c tests_per_anon_test_case
    assert [x.suffix for x in b[:4]] == ["with base page", "with swapped out base page",
                                          "with PTE-mapped THP (16 kB)", "with swapped-out, PTE-mapped THP (16 kB)"]
    pmd = [x.suffix for x in b if x.size == 2 * M and x.thp]
    assert pmd == ["with THP (2048 kB)", "with swapped-out THP (2048 kB)", "with PTE-mapped THP (2048 kB)",
                   "with swapped-out, PTE-mapped THP (2048 kB)", "with single PTE of THP (2048 kB)",
                   "with single PTE of swapped-out THP (2048 kB)", "with partially mremap()'ed THP (2048 kB)",
                   "with partially shared THP (2048 kB)"]
    assert [x.suffix for x in b[-2:]] == ["with hugetlb (2048 kB)", "with hugetlb (1048576 kB)"]


def test_cow_c_plan_is_reached() -> None:
    """cow.c's plan with liburing, T=8, H=2 is 778, of which 4 are the THP-collapse cases
    (another area): this area's 14 anon and 3 non-anon cases give the other 774."""
    anon = 14 * len(anon_backings(THP, HUGETLB, 2 * M))
    non_anon = 3 * len(non_anon_backings(HUGETLB, 2 * M))
    assert anon + non_anon + 4 == 778


def test_non_anon_backings_order_and_names() -> None:
    assert [x.suffix for x in non_anon_backings(HUGETLB, 2 * M)] == [
        "with shared zeropage", "with memfd", "with tmpfile", "with huge zeropage",
        "with memfd hugetlb (2048 kB)", "with memfd hugetlb (1048576 kB)"]
    assert [x.suffix for x in non_anon_backings((), 0)] == ["with shared zeropage", "with memfd", "with tmpfile"]


def test_backing_flags() -> None:
    assert AnonBacking("pte_swap", 64 * K).swap and AnonBacking("base_swap").swap
    assert not AnonBacking("mremap", 64 * K).swap
    assert AnonBacking("hugetlb", 2 * M).hugetlb and not AnonBacking("hugetlb", 2 * M).thp
    assert str(NonAnonBacking("memfd_hugetlb", 2 * M)) == "with memfd hugetlb (2048 kB)"


def test_snapshot_detects_a_changed_last_byte_and_a_changed_first_byte() -> None:
    n = 3 * libc.PAGE_SIZE
    m = libc.mmap(n)
    libc.fill(m, 1, n)
    s = Snapshot.take(m, n)
    assert s.byte == 1 and s.matches(m)
    libc.fill(m + n - 1, 0xFF, 1)
    assert not s.matches(m)
    libc.fill(m + n - 1, 1, 1)
    libc.fill(m, 0xFF, 1)
    assert not s.matches(m)
    assert s.matches_bytes(b"\x01" * 10) and not s.matches_bytes(b"\x01\xff")


def test_snapshot_of_mixed_content_is_a_copy() -> None:
    n = libc.PAGE_SIZE
    m = libc.mmap(n)
    libc.write(m, b"abc")
    s = Snapshot.take(m, n)
    assert s.byte is None and s.matches(m)
    libc.write(m + 100, b"x")
    assert not s.matches(m)


def test_libc_is_uniform_edges() -> None:
    m = libc.mmap(libc.PAGE_SIZE)
    assert libc.is_uniform(m, 0, libc.PAGE_SIZE)
    assert libc.is_uniform(m, 7, 0)
    assert not libc.is_uniform(m, 1, 1)
    libc.fill(m + 5, 9, 1)
    assert not libc.is_uniform(m, 0, libc.PAGE_SIZE)


def test_swap_header_layout() -> None:
    size = 64 * M
    h = swap.header(size, 4096)
    assert len(h) == 4096
    assert h[-10:] == b"SWAPSPACE2"
    version, last_page, nr_bad = struct.unpack_from("<III", h, 1024)
    assert (version, last_page, nr_bad) == (1, size // 4096 - 1, 0)
    assert h[:1024] == bytes(1024)


def test_swap_repair_removes_a_journalled_device(tmp_path) -> None:
    """A journal left by a killed run: repair resets the (here fake) zram device and drops
    the journal; the device is not an active swap, so no swapoff is attempted."""
    sysfs = tmp_path / "zram9"
    sysfs.mkdir()
    (sysfs / "initstate").write_text("1")
    (sysfs / "disksize").write_text("268435456")
    (sysfs / "reset").write_text("")
    t = swap.TempSwap("/dev/kmm-test-zram9", str(sysfs), None, 256 * M)
    (tmp_path / "swap.json").write_text(json.dumps(t.__dict__))
    got = swap.repair(str(tmp_path))
    assert got == {"swap /dev/kmm-test-zram9": "removed"}
    assert (sysfs / "reset").read_text() == "1"
    assert not (tmp_path / "swap.json").exists()
    assert swap.repair(str(tmp_path)) == {}



# -- the memory types cow.c's backings are (lib.kernel.memtypes, issue 16) ------------------------


def test_backings_name_their_memory_type() -> None:
    """The table in cases/cow/backings.py, as data."""
    assert AnonBacking("base").memtype == MemType(memtypes.ANON)
    assert AnonBacking("base_swap").memtype == MemType(memtypes.ANON)
    for run in ("pmd", "pte_swap", "single", "mremap", "shared"):
        assert AnonBacking(run, 64 * K).memtype.name == "anon-thp (64 kB)"
    h = AnonBacking("hugetlb", 2 * M).memtype
    assert (h.kind, h.size, h.max_pages) == (memtypes.HUGETLB_ANON, 2 * M, 2)
    assert NonAnonBacking("memfd").memtype == MemType(memtypes.SHMEM_MAP_PRIVATE)
    h = NonAnonBacking("memfd_hugetlb", 2 * M).memtype
    assert h is not None and (h.kind, h.size) == (memtypes.HUGETLB_PRIVATE, 2 * M)
    for kind in ("zeropage", "huge_zeropage", "tmpfile"):
        assert NonAnonBacking(kind).memtype is None


def _mismatches(backing, claimed: MemType | None = None, view: MemType | None = None) -> None:
    """In a forked child: set ``backing`` up as a case does and fail with what differs between
    its mapping and ``claimed`` (default: the backing's own memory type), and between the R/O
    view of a non-anonymous backing and ``view``."""
    with backing.setup() as m:
        want = claimed or backing.memtype
        problems = want.mismatches(memory.Region(m.addr, m.size))
        if view is not None:
            problems += [f"view: {p}" for p in view.mismatches(memory.Region(m.saddr, m.size))]
    assert not problems, "; ".join(problems)


def _run(backing, claimed: MemType | None = None, view: MemType | None = None):
    out = run_isolated(lambda: _mismatches(backing, claimed, view), 30, skip_types=(pytest.skip.Exception,))
    if out.kind == "skip":
        pytest.skip(out.message)
    return out


def _base_backings() -> list:
    out: list = [AnonBacking("base"), NonAnonBacking("memfd")]
    pmd = system.pmd_size()
    if pmd and pmd in system.thp_sizes():
        out += [AnonBacking(r, pmd) for r in ("pmd", "pte", "single", "mremap", "shared")]
    return out


@pytest.mark.parametrize("backing", _base_backings(), ids=str)
def test_a_backing_maps_its_memory_type(backing) -> None:
    """The mapping a case gets is the one its memory type names (read back from smaps); a
    memfd backing's R/O view is a ``shmem`` mapping of the same file."""
    view = MemType(memtypes.SHMEM) if isinstance(backing, NonAnonBacking) else None
    out = _run(backing, view=view)
    assert out.kind == "pass", out.message


@pytest.fixture
def hugetlb_pages():
    """Four default-size hugetlb pages, under the suite's run lock, put back afterwards."""
    size = system.default_hugetlb_size()
    with controls.hugetlb_pages(size, 4):
        yield size


@pytest.mark.parametrize("cls, kind", [(AnonBacking, "hugetlb"), (NonAnonBacking, "memfd_hugetlb")])
def test_a_hugetlb_backing_maps_its_memory_type(cls, kind: str, hugetlb_pages: int) -> None:
    backing = cls(kind, hugetlb_pages)
    view = MemType(memtypes.HUGETLB, hugetlb_pages) if cls is NonAnonBacking else None
    out = _run(backing, view=view)
    assert out.kind == "pass", out.message


# negative controls: the same check fails on a mapping that is not the claimed type
@pytest.mark.parametrize("backing, claimed", [
    (NonAnonBacking("tmpfile"), MemType(memtypes.SHMEM_MAP_PRIVATE)),  # a /tmp file is no memfd
    (NonAnonBacking("memfd"), MemType(memtypes.ANON)),
    (AnonBacking("base"), MemType(memtypes.SHARED_ANON)),
], ids=["tmpfile is not shmem-map-private", "memfd is not anon", "base page is not shared-anon"])
def test_a_backing_that_is_not_the_claimed_type_is_caught(backing, claimed: MemType) -> None:
    out = _run(backing, claimed)
    assert out.kind == "fail" and "is " in out.message, out.message


def test_a_view_that_is_not_shmem_is_caught() -> None:
    out = _run(NonAnonBacking("memfd"), view=MemType(memtypes.SHMEM_MAP_PRIVATE))
    assert out.kind == "fail" and "view: shared" in out.message, out.message
