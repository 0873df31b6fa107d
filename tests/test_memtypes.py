"""lib.kernel.memtypes: one name, one mapping.

* Names: every (kind, size) has one name, ``<kind>`` or ``<kind> (<N> kB)`` (anon-thp always
  sized, hugetlb sized off the default huge page size), no two types share one, and the
  module's table names exactly the kinds there are.
* Mappings: each type's map() is read back from the kernel (/proc/self/maps: MAP_SHARED or
  private, the backing file; smaps: KernelPageSize, VM_HUGEPAGE), and MemType.mismatches()
  agrees.
* Negative controls: a type whose map() makes another type's mapping is caught by
  mismatches() (every pair of kinds that are different mappings), as are a wrong hugetlb size
  and an unaligned anon-thp; the pool probe skips, a refused hugetlb mapping with the pool's
  pages there fails, and a pool that cannot be grown is not tried again.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass

import pytest

from lib.kernel import abi, libc, memory, memtypes, system
from lib.kernel.memtypes import (
    ANON,
    ANON_THP,
    HUGETLB,
    HUGETLB_ANON,
    HUGETLB_KINDS,
    HUGETLB_PRIVATE,
    KINDS,
    SHARED_ANON,
    SHMEM,
    SHMEM_MAP_PRIVATE,
    SHMEM_PRIVATE,
    MemType,
    mem_types,
)
from lib.runner import isolation
from tests.controls import hugetlb_pages

MiB, GiB, KiB = system.MiB, system.GiB, system.KiB
DEFAULT_HUGE = system.default_hugetlb_size() or 2 * MiB
BASE_KINDS = (ANON, SHARED_ANON, SHMEM, SHMEM_PRIVATE, SHMEM_MAP_PRIVATE)
# the pairs of kinds that are the same mapping (the table: upstream's test logic alone differs)
SAME_MAPPING = {frozenset((SHMEM, SHMEM_PRIVATE))}
NAME = re.compile(r"(?P<kind>[a-z-]+)( \((?P<kb>\d+) kB\))?")


# ---------------------------------------------------------------------------------------
# names


def all_types() -> list[MemType]:
    """Every kind at a THP size and the hugetlb sizes an x86-64 kernel offers (no probe)."""
    return mem_types(KINDS, hugetlb_sizes=[DEFAULT_HUGE, GiB if GiB != DEFAULT_HUGE else 2 * MiB],
                     thp_sizes=[64 * KiB, 2 * MiB])


def test_name_format_and_one_type_per_name() -> None:
    names: dict[str, MemType] = {}
    for t in all_types():
        m = NAME.fullmatch(t.name)
        assert m, f"{t.name!r} is not '<kind>' or '<kind> (<N> kB)'"
        assert m["kind"] == t.kind
        if t.kind == ANON_THP:
            assert int(m["kb"]) * KiB == t.size, t.name
        elif t.hugetlb:
            assert (m["kb"] is None) == (t.size == DEFAULT_HUGE), t.name
            assert m["kb"] is None or int(m["kb"]) * KiB == t.size, t.name
        else:
            assert m["kb"] is None, t.name
        assert names.setdefault(t.name, t) == t, f"{t.name!r} names both {names[t.name]} and {t!r}"
        assert str(t) == t.name


def test_default_hugetlb_size_keeps_the_plain_name() -> None:
    assert MemType(HUGETLB, DEFAULT_HUGE).name == HUGETLB
    assert MemType(HUGETLB_ANON, DEFAULT_HUGE).name == HUGETLB_ANON
    other = GiB if GiB != DEFAULT_HUGE else 2 * MiB
    assert MemType(HUGETLB_PRIVATE, other).name == f"hugetlb-private ({other // KiB} kB)"
    assert MemType(ANON_THP, 64 * KiB).name == "anon-thp (64 kB)"


def table_rows() -> dict[str, str]:
    """The module docstring's table: name -> the first line of its mapping column."""
    doc = memtypes.__doc__ or ""
    rows = re.findall(r"^([a-z][a-z-]*)(?: \(N kB\))?\s{2,}(\S.*?)\s{2,}", doc, re.M)
    return {name: text for name, text in rows if name != "name"}


def test_the_table_names_every_kind_and_its_mapping() -> None:
    rows = table_rows()
    assert sorted(rows) == sorted(KINDS)
    for kind, text in rows.items():
        t = MemType(kind, 2 * MiB if kind in HUGETLB_KINDS or kind == ANON_THP else 0)
        if kind == SHMEM_PRIVATE:
            assert "same mapping as shmem" in text and t.expected() == MemType(SHMEM).expected()
            continue
        assert ("MAP_SHARED" in text) == t.map_shared, (kind, text)
        assert ("HUGETLB" in text) == t.hugetlb, (kind, text)
        assert ("memfd_create" in text) == t.file_backed, (kind, text)


@pytest.mark.parametrize(("kind", "size"), [("anon", 2 * MiB), ("hugetlb", 0), ("anon-thp", 0), ("thp", 0)])
def test_a_type_that_is_not_one_is_refused(kind: str, size: int) -> None:
    with pytest.raises(ValueError):
        MemType(kind, size)


# ---------------------------------------------------------------------------------------
# mappings, read back from the kernel


@dataclass(frozen=True)
class Want:
    shared: bool
    path: str  # "" (anonymous), a prefix of the path
    huge: bool  # KernelPageSize is the type's huge page size


WANT = {
    ANON: Want(False, "", False),
    ANON_THP: Want(False, "", False),
    SHARED_ANON: Want(True, "/dev/zero", False),
    SHMEM: Want(True, "/memfd:", False),
    SHMEM_PRIVATE: Want(True, "/memfd:", False),
    SHMEM_MAP_PRIVATE: Want(False, "/memfd:", False),
    HUGETLB: Want(True, "/memfd:", True),
    HUGETLB_PRIVATE: Want(False, "/memfd:", True),
    HUGETLB_ANON: Want(False, "/anon_hugepage", True),
}


@pytest.fixture(scope="module")
def hugetlb_pool():
    """A few default-size hugetlb pages (tests/controls.py)."""
    with hugetlb_pages(DEFAULT_HUGE, 4):
        yield


def thp_size() -> int:
    sizes = system.thp_sizes()
    if not sizes:
        pytest.skip("no anon THP sizes")
    return 64 * KiB if 64 * KiB in sizes else min(sizes)


def mapped_types(request: pytest.FixtureRequest) -> list[MemType]:
    out = [MemType(k) for k in BASE_KINDS] + [MemType(ANON_THP, thp_size())]
    if system.is_root() and DEFAULT_HUGE in system.hugetlb_sizes():
        request.getfixturevalue("hugetlb_pool")
        out += [MemType(k, DEFAULT_HUGE) for k in HUGETLB_KINDS]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_map_makes_the_mapping_of_the_name(kind: str, request: pytest.FixtureRequest) -> None:
    if kind in HUGETLB_KINDS:
        request.getfixturevalue("hugetlb_pool")
        t = MemType(kind, DEFAULT_HUGE)
    else:
        t = MemType(kind, thp_size() if kind == ANON_THP else 0)
    w = WANT[kind]
    with t.map(2) as r:
        perms, path, kps = vma_of(r.addr)
        assert (perms[3] == "s") == w.shared, f"{t}: {perms} {path}"
        assert path.startswith(w.path) if w.path else path == "", f"{t}: mapped {path!r}"
        assert kps == (t.size if w.huge else system.PAGE_SIZE), f"{t}: KernelPageSize {kps // KiB} kB"
        assert r.page_size == t.page_size
        assert r.size == (t.size if t.thp else 2 * t.page_size)
        assert t.mismatches(r) == [], t.mismatches(r)
        if t.thp:
            assert r.addr % t.size == 0 and memtypes.mapping_at(r.addr).hugepage_advised
        libc.fill(r.addr, 0x5A, r.size)  # the mapping is usable
        assert libc.is_filled(r.addr, 0x5A, r.size)


def smaps_block(addr: int) -> str:
    """The /proc/self/smaps block of the VMA holding ``addr``, read here (not through the
    module under test)."""
    with open("/proc/self/smaps") as f:
        text = f.read()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        start, end = (int(x, 16) for x in block.split(None, 1)[0].split("-"))
        if start <= addr < end:
            return block
    raise LookupError(hex(addr))


def vma_of(addr: int) -> tuple[str, str, int]:
    """(permissions, path, KernelPageSize in bytes) of the VMA holding ``addr``."""
    block = smaps_block(addr)
    head = block.split("\n", 1)[0].split(None, 5)
    kps = re.search(r"^KernelPageSize:\s+(\d+) kB", block, re.M)
    assert kps, block
    return head[1], head[5].strip() if len(head) > 5 else "", int(kps.group(1)) * KiB


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_align(kind: str) -> None:
    t = MemType(kind)
    with t.map(4, align=2 * MiB) as r:
        assert r.addr % (2 * MiB) == 0 and t.mismatches(r) == []


def vm_flags(addr: int) -> list[str]:
    m = re.search(r"^VmFlags:(.*)$", smaps_block(addr), re.M)
    return m.group(1).split() if m else []


@pytest.mark.parametrize("kind", HUGETLB_KINDS)
def test_noreserve(kind: str, hugetlb_pool) -> None:
    """MAP_NORESERVE shows as ``nr`` in VmFlags; without it the mapping has none."""
    t = MemType(kind, DEFAULT_HUGE)
    with t.map(1, noreserve=True) as r:
        assert "nr" in vm_flags(r.addr) and t.mismatches(r) == []
    with t.map(1) as r:
        assert "nr" not in vm_flags(r.addr)


# ---------------------------------------------------------------------------------------
# negative controls: the check catches a wrong mapping


@dataclass(frozen=True)
class WrongType(MemType):
    """A broken memory type: its name is ``kind``'s, its map() makes ``actual``'s mapping."""

    actual: MemType | None = None

    def map(self, pages: int, populate: bool = False, *, noreserve: bool = False,
            align: int = 0) -> memory.Region:
        assert self.actual is not None
        return self.actual.map(pages)


def test_a_type_mapping_another_kinds_memory_is_caught(request: pytest.FixtureRequest) -> None:
    types = mapped_types(request)
    caught = 0
    for actual in types:
        for named in types:
            if named.kind == actual.kind or frozenset((named.kind, actual.kind)) in SAME_MAPPING:
                continue
            wrong = WrongType(named.kind, named.size, actual=actual)
            with wrong.map(1) as r:
                assert wrong.mismatches(r), f"{wrong.name} mapping {actual.name} memory passed the check"
            caught += 1
    assert caught >= len(types) * (len(types) - 2)


def test_same_mapping_pairs_are_what_the_table_says() -> None:
    """shmem and shmem-private are one mapping (the control above cannot and must not tell them
    apart); every other pair differs in what mismatches() compares."""
    for a in KINDS:
        for b in KINDS:
            if a == b:
                continue
            ta = MemType(a, 2 * MiB if a in HUGETLB_KINDS or a == ANON_THP else 0)
            tb = MemType(b, 2 * MiB if b in HUGETLB_KINDS or b == ANON_THP else 0)
            same = ta.expected() == tb.expected()
            assert same == (frozenset((a, b)) in SAME_MAPPING), (a, b)


def test_a_wrong_hugetlb_size_is_caught(hugetlb_pool) -> None:
    other = GiB if GiB != DEFAULT_HUGE else 2 * MiB
    with MemType(HUGETLB, DEFAULT_HUGE).map(1) as r:
        assert any("kernel_page_size" in m for m in MemType(HUGETLB, other).mismatches(r))


def test_an_unaligned_anon_thp_is_caught() -> None:
    size = thp_size()
    t = MemType(ANON_THP, size)
    hole = memory.aligned_anon(2 * size, size)
    try:
        libc.madvise(hole.addr + system.PAGE_SIZE, size, abi.Madv.HUGEPAGE)
        r = memory.Region(hole.addr + system.PAGE_SIZE, size)
        assert any("not aligned" in m for m in t.mismatches(r))
        plain = memory.Region(hole.addr, system.PAGE_SIZE)  # aligned, no MADV_HUGEPAGE there
        assert [m for m in t.mismatches(plain) if "hugepage_advised" in m] == t.mismatches(plain) != []
    finally:
        hole.close()


def test_mapping_at_an_unmapped_address_raises() -> None:
    r = memory.anon(system.PAGE_SIZE)
    addr = r.addr
    r.close()
    with pytest.raises(LookupError):
        memtypes.mapping_at(addr)


# ---------------------------------------------------------------------------------------
# the pool: skip from the probe, fail on a refused mapping, no second try of a failed size


def outcome(fn) -> isolation.Outcome:
    return isolation.run_isolated(fn, 30, skip_types=(pytest.skip.Exception,))


def test_hugetlb_map_skips_when_the_pool_probe_says_no(hugetlb_pool) -> None:
    def body():
        memtypes.hugetlb_pool.available = lambda size: 0  # the probe: an empty pool (isolated child)
        MemType(HUGETLB_PRIVATE, DEFAULT_HUGE).map(1)

    o = outcome(body)
    assert o.kind == "skip" and "0 available" in o.message, f"{o.kind}: {o.message}"


def test_require_skips_when_the_pool_probe_says_no(hugetlb_pool) -> None:
    def body():
        memtypes.hugetlb_pool.available = lambda size: 1
        MemType(HUGETLB, DEFAULT_HUGE).require(pages=2)

    o = outcome(body)
    assert o.kind == "skip" and "2 free unreserved pages needed" in o.message, f"{o.kind}: {o.message}"


@pytest.mark.parametrize("kind", HUGETLB_KINDS)
def test_a_refused_hugetlb_mapping_with_the_pages_there_fails(kind: str, hugetlb_pool) -> None:
    def body():
        def refuse(*a, **kw):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        libc.mmap = refuse  # in the isolated child only
        MemType(kind, DEFAULT_HUGE).map(1)

    o = outcome(body)
    assert o.kind == "fail" and "although the pool had" in o.message, f"{o.kind}: {o.message}"


def test_a_pool_that_cannot_grow_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    if not system.hugetlb_sizes():
        pytest.skip("no hugetlb sizes")
    size = system.hugetlb_sizes()[0]
    calls: list[int] = []
    compactions: list[int] = []

    class Settings:
        def hugetlb(self, s: int, pages: int) -> None:
            calls.append(pages)
            pytest.skip(f"cannot grow the {system.size_label(s)} pool to {pages}")

    monkeypatch.setattr(memtypes, "_POOL_FAILED", {})
    monkeypatch.setattr(memtypes, "compact_memory", lambda: compactions.append(1) or True)
    monkeypatch.setattr(system, "is_root", lambda: True)
    for _ in range(2):
        with pytest.raises(pytest.skip.Exception, match="also after compacting memory"):
            memtypes.grow_pool(Settings(), size, 10**6)
    assert calls == [10**6, 10**6] and compactions == [1], "the second case tried the failed size again"
