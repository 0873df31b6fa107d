"""Negative controls of the write-protect area (cases/wp_async): every oracle can fail.

Each control feeds an oracle a wrong world -- a handler that resolves a WP fault without
unprotecting, a handler that installs read faults unprotected, a scan whose expected region
count is off by one page, a workload with one extra written page, a child that did see bit
57 -- and asserts the oracle reports it.  Anything that touches userfaultfd memory runs in
lib.runner.isolation.run_isolated with a deadline, so a control that goes wrong cannot hang pytest.
"""

from __future__ import annotations

import pytest

from lib.kernel import abi, libc, system
from lib.kernel.pagemap import Entry
from lib.runner.isolation import run_isolated
from tests.controls import hugetlb_pages

pytestmark = pytest.mark.skipif(not system.is_root(), reason="needs root (pagemap PFNs, uffd WP on all memory)")

SKIPS = (pytest.skip.Exception,)


def isolated(fn, timeout: float = 30.0):
    out = run_isolated(fn, timeout, skip_types=SKIPS)
    if out.kind == "skip":
        pytest.skip(out.message)
    return out


# -- sync WP round trip ---------------------------------------------------------------------
def _sync_case(resolve_name: str) -> None:
    from cases.wp_async.support import check_sync_wp, resolve_unprotect, sync_wp_write, wp_uffd
    from lib.kernel import memory

    resolvers = {
        "unprotect": resolve_unprotect,
        "wake only": lambda u, a, n: u.wake(a, n),  # resolves without unprotecting
        "nothing": lambda u, a, n: None,
    }
    r = memory.anon(2 * 4096)
    libc.fill(r.addr, 0x11, r.size)
    with wp_uffd(r, abi.Feature.PAGEFAULT_FLAG_WP) as u:
        u.writeprotect(r.addr, r.size, True)
        obs = sync_wp_write(u, r.addr + 4096, 4096, b"new!", resolvers[resolve_name], timeout=2.0)
        check_sync_wp(obs, r.addr + 4096, b"\x11" * 4, b"new!")


def test_sync_oracle_passes_with_unprotect() -> None:
    out = isolated(lambda: _sync_case("unprotect"))
    assert out.kind == "pass", out.message


@pytest.mark.parametrize("resolver", ["wake only", "nothing"])
def test_sync_oracle_catches_resolver_that_does_not_unprotect(resolver: str) -> None:
    out = isolated(lambda: _sync_case(resolver))
    assert out.kind == "fail", f"the oracle accepted a {resolver!r} resolver: {out.kind} {out.message}"
    assert "refault" in out.message or "woken" in out.message or "bit 57" in out.message, out.message


# -- e2b dirtiness matrix ---------------------------------------------------------------------
def test_dirtiness_pure_functions() -> None:
    from cases.wp_async.test_always_wp import expected_states, expected_wp_faults, observed_states

    ops = [("r", 0), ("w", 1), ("r", 1)]
    assert expected_states(ops) == ["clean", "dirty", "missing", "missing"]
    present_wp = Entry(abi.PM_PRESENT | abi.PM_UFFD_WP)
    present = Entry(abi.PM_PRESENT)
    assert observed_states([present_wp, present, Entry(0)]) == ["clean", "dirty", "missing"]
    # a clean page reported without bit 57 is "dirty": the oracle tells them apart
    assert observed_states([present]) != expected_states([("r", 0)], 1)
    assert expected_wp_faults([("w", 0)], always_wp=True, sync=True) == 1
    assert expected_wp_faults([("w", 0)], always_wp=False, sync=True) == 0
    assert expected_wp_faults([("r", 0), ("w", 0)], always_wp=False, sync=False) == 0


def _e2b(seq: str, policy: str, options_override: dict) -> None:
    from cases.wp_async.test_always_wp import POLICIES, SEQUENCES, Arm, check_sequence, run_sequence
    from lib.kernel.handler.options import Options

    arm = Arm(seq, "4k", policy, "WP_ASYNC")
    opts = Options(**{**vars(POLICIES[policy]), **options_override})
    check_sequence(arm, *run_sequence(arm.backing, SEQUENCES[seq], opts, sync=False))


def test_e2b_oracle_passes() -> None:
    assert isolated(lambda: _e2b("all reads (all clean)", "WP on reads", {})).kind == "pass"


def test_e2b_oracle_catches_reads_installed_unprotected() -> None:
    """A handler that forgets COPY_MODE_WP on read faults (e2b's "Reproduce WP bug")."""
    out = isolated(lambda: _e2b("all reads (all clean)", "WP on reads", {"copy_mode_wp_reads": False}))
    assert out.kind == "fail" and "dirty/clean/missing" in out.message, out.message


def test_e2b_oracle_catches_wrong_page_served() -> None:
    out = isolated(lambda: _e2b("read then write", "WP on reads", {"wrong_page": True}))
    assert out.kind == "fail", out.message


# -- PAGEMAP_SCAN region counts ---------------------------------------------------------------
def _async_written(claim: list[int]) -> None:
    from cases.wp_async.backings import WpBacking
    from cases.wp_async.support import wp_uffd
    from cases.wp_async.test_async_wp import check_written, scan_written

    b = WpBacking("anon")
    r = b.map(8)
    b.populate(r)
    with wp_uffd(r, b.wp_feature | int(abi.Feature.WP_ASYNC)) as u:
        u.writeprotect(r.addr, r.size, True)
        for i in (1, 2, 5):
            libc.touch_write(r.page(i), 1)
        check_written(scan_written(r), r, 4096, claim, "control")


def test_region_oracle_passes() -> None:
    assert isolated(lambda: _async_written([1, 2, 5])).kind == "pass"


@pytest.mark.parametrize("claim", [[1, 2], [1, 2, 5, 6], [0, 1, 2, 5]], ids=["one page short", "one page extra",
                                                                               "shifted by one page"])
def test_region_oracle_catches_count_off_by_one_page(claim: list[int]) -> None:
    out = isolated(lambda: _async_written(claim))
    assert out.kind == "fail" and "PAGE_IS_WRITTEN" in out.message, out.message


def _pmi_step(block: str, index: int, **kw) -> None:
    from cases.wp_async import pagemap_ioctl

    ctx = pagemap_ioctl.Ctx()
    try:
        results = list(getattr(pagemap_ioctl, block)(ctx, **kw))
    finally:
        ctx.close()
    ok, detail = results[index]
    assert ok, detail


def test_pmi_pattern_step_passes() -> None:
    assert isolated(lambda: _pmi_step("sd_pattern", 1)).kind == "pass"


def test_pmi_pattern_catches_one_extra_written_page() -> None:
    """sanity_tests_sd "Repeated pattern": 501 written pages merge into 499 regions, not 500."""
    out = isolated(lambda: _pmi_step("sd_pattern", 1, extra_write=True))
    assert out.kind == "fail" and "want 500" in out.message, out.message


# -- pagemap_ioctl: a failing setup step is a failure, not a skip ---------------------------------
def _pmi_case(block_name: str, index: int, fail_call: str | None) -> None:
    """Run one pagemap_ioctl step as the case does; ``fail_call`` makes UFFDIO_REGISTER or
    UFFDIO_WRITEPROTECT fail with EINVAL (a kernel that offers the features but refuses them)."""
    import errno

    from cases.wp_async import test_pagemap_ioctl
    from lib.kernel.uffd import UffdError, Userfaultfd

    if fail_call is not None:
        def refuse(self, *a, **kw):
            raise UffdError(errno.EINVAL, fail_call)

        setattr(Userfaultfd, {"UFFDIO_REGISTER": "register", "UFFDIO_WRITEPROTECT": "writeprotect"}[fail_call], refuse)
    step = next(s for s in test_pagemap_ioctl.STEPS if s.block == block_name and s.index == index)
    test_pagemap_ioctl.test_pagemap_ioctl(step)


@pytest.mark.parametrize("block_name", ["base:Page testing:", "base:File memory testing:", "sd_pattern"])
@pytest.mark.parametrize("fail_call", ["UFFDIO_REGISTER", "UFFDIO_WRITEPROTECT"])
def test_pmi_failing_register_or_writeprotect_is_a_failure_not_a_skip(block_name: str, fail_call: str) -> None:
    """Before, any OSError in a base: block became "backing unavailable" (a skip)."""
    ok = isolated(lambda: _pmi_case(block_name, 0, None))
    assert ok.kind == "pass", f"unmutated step: {ok.kind} {ok.message}"
    out = run_isolated(lambda: _pmi_case(block_name, 0, fail_call), 30, skip_types=SKIPS)
    assert out.kind == "fail", f"{fail_call} failing gave {out.kind}: {out.message}"
    assert out.message.startswith(f"setup step failed: block {block_name}") and fail_call in out.message, out.message


# -- pagemap_ioctl: a backing is the memory type it names (lib.kernel.memtypes, issue 16) ---------
HUGE_2M = 2 * system.MiB


def _pmi_backing_mismatches(kind: str, claimed=None) -> None:
    """In a forked child: set up one base_tests backing as its case does and fail with what
    differs between its mapping and ``claimed`` (default: the backing's memory type)."""
    from cases.wp_async import pagemap_ioctl
    from lib.kernel import memory

    pagemap_ioctl.require_base_backing(kind)
    want = claimed or pagemap_ioctl.base_memtype(kind)
    addr, size, cleanup = pagemap_ioctl.base_backing(kind)
    try:
        problems = want.mismatches(memory.Region(addr, size))
    finally:
        cleanup()
    assert not problems, "; ".join(problems)


@pytest.fixture
def pool_2m():
    """Four 2 MiB hugetlb pages (pagemap_ioctl.c's hugetlb_setup_default(4)), under the suite's
    run lock, put back afterwards (tests/controls.py)."""
    with hugetlb_pages(HUGE_2M, 4):
        yield


PMI_TYPED = ["Page testing:", "Large Page testing:", "Huge page testing:", "Hugetlb mem testing:",
             "Hugetlb shmem testing: (2)", "File anonymous memory testing:"]


def test_pmi_backings_with_a_memory_type_are_the_table() -> None:
    from cases.wp_async import pagemap_ioctl

    typed = [k for k in pagemap_ioctl.BASE_BACKINGS if pagemap_ioctl.base_memtype(k) is not None]
    assert typed == PMI_TYPED


@pytest.mark.parametrize("kind", PMI_TYPED)
def test_pmi_backing_maps_its_memory_type(kind: str, request: pytest.FixtureRequest) -> None:
    if kind.startswith("Hugetlb"):
        request.getfixturevalue("pool_2m")
    out = isolated(lambda: _pmi_backing_mismatches(kind))
    assert out.kind == "pass", out.message


def _claimed(kind: str):
    from lib.kernel import memtypes

    return {"anon-thp": memtypes.MemType(memtypes.ANON_THP, system.pmd_size() or HUGE_2M),
            "shmem-map-private": memtypes.MemType(memtypes.SHMEM_MAP_PRIVATE),
            "hugetlb": memtypes.MemType(memtypes.HUGETLB, HUGE_2M)}[kind]


# negative controls: the same check fails on a backing that is not the claimed type
@pytest.mark.parametrize("kind, claimed", [
    ("Page testing:", "anon-thp"),  # no MADV_HUGEPAGE
    ("File memory testing:", "shmem-map-private"),  # a /tmp file is no memfd
    ("Hugetlb shmem testing:", "hugetlb"),  # a SysV segment is no memfd: why it keeps its own code
])
def test_pmi_backing_that_is_not_the_claimed_type_is_caught(kind: str, claimed: str,
                                                             request: pytest.FixtureRequest) -> None:
    if kind.startswith("Hugetlb"):
        request.getfixturevalue("pool_2m")
    out = isolated(lambda: _pmi_backing_mismatches(kind, _claimed(claimed)))
    assert out.kind == "fail" and f"{_claimed(claimed).name} is" in out.message, out.message


# -- fork, markers, close -----------------------------------------------------------------------
def _fork_bit(with_event: bool, expect: bool) -> None:
    from cases.wp_async.test_wp_fork import child_bit57
    from lib import check
    from lib.kernel import memory
    from lib.kernel.serve import served

    r = memory.anon(4096)
    feats = int(abi.Feature.PAGEFAULT_FLAG_WP) | (int(abi.Feature.EVENT_FORK) if with_event else 0)
    with served(r, "process", feats, abi.RegisterMode.WP) as s:
        libc.fill(r.addr, 1, 4096)
        s.uffd.writeprotect(r.addr, 4096, True)
        check.eq(child_bit57(r.addr, with_event, s.handler), expect, "child bit 57")


def test_fork_oracle_distinguishes_event() -> None:
    assert isolated(lambda: _fork_bit(True, True)).kind == "pass"
    assert isolated(lambda: _fork_bit(False, False)).kind == "pass"
    out = isolated(lambda: _fork_bit(True, False))
    assert out.kind == "fail", "a child that keeps bit 57 must fail a 'clear' expectation"


def _close_check(do_close: bool) -> None:
    from cases.wp_async.backings import WpBacking
    from cases.wp_async.support import wp_bits
    from lib import check
    from lib.kernel.uffd import open_for

    b = WpBacking("anon")
    r = b.map(2)
    libc.fill(r.addr, 1, r.size)
    u = open_for(b.wp_feature)
    u.register(r.addr, r.size, abi.RegisterMode.WP)
    u.writeprotect(r.addr, r.size, True)
    if do_close:
        u.close()
    check.eq(wp_bits(r, 4096), [False, False], "bit 57 after close() without unregister")


def test_close_oracle_catches_bits_left_behind() -> None:
    assert isolated(lambda: _close_check(True)).kind == "pass"
    out = isolated(lambda: _close_check(False))  # the "unfixed kernel" world: bits still set
    assert out.kind == "fail" and "bit 57" in out.message, out.message


def _marker(protect: bool) -> None:
    from cases.wp_async.support import wp_bits, wp_uffd
    from lib import check
    from lib.kernel import memory

    r = memory.anon(4096)
    feats = int(abi.Feature.PAGEFAULT_FLAG_WP | abi.Feature.WP_UNPOPULATED)
    with wp_uffd(r, feats) as u:
        if protect:
            u.writeprotect(r.addr, 4096, True)
        check.eq(wp_bits(r, 4096), [True], "bit 57 on an untouched, protected page (pte marker)")


def test_marker_oracle_catches_missing_marker() -> None:
    assert isolated(lambda: _marker(True)).kind == "pass"
    assert isolated(lambda: _marker(False)).kind == "fail"
