"""Negative controls for the THP-collapse skip probes (cases/thp_collapse/probes.py), for the
collapse context's verdicts after a khugepaged wait, and for the scratch filesystem of the
file contexts (cases/thp_collapse/scratchfs.py).

A skip must come from config or sysfs, never from trying the collapse: each probe is fed a
config / sysfs tree that must make it skip (with the reason) and one that must not.
"""

from __future__ import annotations

import gzip
import os

import pytest

from cases.thp_collapse import contexts, matrix, probes, regions, scratchfs
from lib import check
from lib.kernel import abi, libc, system

THP_Y = {"CONFIG_TRANSPARENT_HUGEPAGE": "y"}
root = pytest.mark.skipif(not system.is_root(), reason="needs root")
thp = pytest.mark.skipif(not system.pmd_size(), reason="no THP")


# -- file collapse from the kernel config ----------------------------------------------------
@pytest.mark.parametrize("mem", [probes.FILE, probes.FILE_RW])
def test_config_without_read_only_thp_skips_with_the_reason(mem):
    ok, why = probes.file_collapse(mem, {**THP_Y, probes.RO_THP: "n"})
    assert not ok and "CONFIG_READ_ONLY_THP_FOR_FS is not set" in why, why


def test_config_with_read_only_thp_runs_read_only_files_only():
    cfg = {**THP_Y, probes.RO_THP: "y"}
    assert probes.file_collapse(probes.FILE, cfg)[0]
    ok, why = probes.file_collapse(probes.FILE_RW, cfg)
    assert not ok and "open for writing" in why and "writable files" in why, why


@pytest.mark.parametrize("mem", [probes.FILE, probes.FILE_RW])
def test_config_where_the_option_was_removed_runs_both(mem):
    ok, why = probes.file_collapse(mem, dict(THP_Y))
    assert ok and "no CONFIG_READ_ONLY_THP_FOR_FS option" in why, why


def test_no_config_or_no_thp_skips_with_the_reason():
    ok, why = probes.file_collapse(probes.FILE, {})
    assert not ok and "no kernel config" in why
    ok, why = probes.file_collapse(probes.FILE, {"CONFIG_TRANSPARENT_HUGEPAGE": "n", probes.RO_THP: "y"})
    assert not ok and "CONFIG_TRANSPARENT_HUGEPAGE is not set" in why


def test_kernel_config_records_options_that_are_not_set():
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        pytest.skip("no /proc/config.gz")
    cfg = system.kernel_config()
    unset = [ln[2:-len(" is not set")] for ln in text.splitlines() if ln.startswith("# CONFIG_")
             and ln.endswith(" is not set")]
    assert unset and all(cfg[k] == "n" for k in unset)
    assert all(system.config_enabled(k) is False for k in unset[:50])


# -- khugepaged mTHP collapse from sysfs -----------------------------------------------------
def test_mthp_khugepaged_needs_the_series_counter(tmp_path):
    ok, why = probes.mthp_khugepaged(16, str(tmp_path))
    assert not ok and "collapse_exceed_none_pte" in why and "PMD size only" in why, why
    stats = tmp_path / "hugepages-16kB" / "stats"
    stats.mkdir(parents=True)
    (stats / "collapse_exceed_none_pte").write_text("0\n")
    ok, why = probes.mthp_khugepaged(16, str(tmp_path))
    assert ok, why
    assert not probes.mthp_khugepaged(32, str(tmp_path))[0]  # per size


# -- require(): the case-level skip decision, fed fake facts -------------------------------------
def _skip_reason(fn) -> str | None:
    try:
        fn()
    except pytest.skip.Exception as e:
        return str(e.msg)
    return None


@root
@thp
def test_require_skips_a_file_variant_from_the_config_alone(monkeypatch, tmp_path):
    v = matrix.Variant("x", "madvise", matrix.FILE)
    monkeypatch.setattr(system, "kernel_config", lambda: {**THP_Y, probes.RO_THP: "n"})
    assert "CONFIG_READ_ONLY_THP_FOR_FS is not set" in (_skip_reason(lambda: matrix.require(v)) or "")
    monkeypatch.setattr(system, "kernel_config", lambda: {**THP_Y, probes.RO_THP: "y"})
    monkeypatch.setenv("KMM_FILE_DIR", str(tmp_path))
    assert _skip_reason(lambda: matrix.require(v)) is None  # claimed: the case runs (and may fail)


@root
@thp
def test_require_skips_an_mthp_khugepaged_variant_from_sysfs_alone(monkeypatch, tmp_path):
    v = matrix.Variant("x", "khugepaged", matrix.ANON, 16 * system.KiB)
    monkeypatch.setattr(system, "THP", str(tmp_path))
    assert "collapse_exceed_none_pte" in (_skip_reason(lambda: matrix.require(v)) or "")
    stats = tmp_path / "hugepages-16kB" / "stats"
    stats.mkdir(parents=True)
    (stats / "collapse_exceed_none_pte").write_text("0\n")
    assert _skip_reason(lambda: matrix.require(v)) is None


def test_no_madvise_variant_of_an_mthp_size_exists():
    for case in ("collapse_full", "collapse_empty"):
        vs = [p.values[0] for p in matrix.params(case)]
        assert all(v.size == matrix.PMD_SIZE for v in vs if v.ctx == "madvise")
        assert all(any(m.name == "deadline" for m in p.marks) for p in matrix.params(case) if p.values[0].khugepaged)


# -- the collapse context's verdicts after the wait -----------------------------------------------
def _base_pages() -> regions.Area:
    a = regions.setup_area(matrix.ANON, matrix.PMD_SIZE)
    libc.madvise(a.addr, matrix.PMD_SIZE, abi.Madv.NOHUGEPAGE)
    regions.fault(a, 0, matrix.PMD_SIZE)
    return a


@root
@thp
def test_collapse_fails_when_khugepaged_scans_but_never_collapses(monkeypatch):
    """khugepaged completed its two full scans and the range is still base pages: a failure."""
    monkeypatch.setattr(contexts, "wait_for_scan", lambda *a, **k: contexts.ScanResult(False, 2, 0, 0.5))
    a = _base_pages()
    try:
        with pytest.raises(AssertionError, match="expected 1 of 1 2048 kB windows huge, got 0"):
            contexts.collapse(matrix.Variant("t", "khugepaged"), a, 1, True, "t")
    finally:
        a.close()


@root
@thp
def test_collapse_hands_cannot_test_on_unchanged(monkeypatch):
    def starved(*a, **k):
        raise check.CannotTest("khugepaged made no progress for 20s")

    monkeypatch.setattr(contexts, "wait_for_scan", starved)
    a = _base_pages()
    try:
        with pytest.raises(check.CannotTest):
            contexts.collapse(matrix.Variant("t", "khugepaged"), a, 1, True, "t")
    finally:
        a.close()


def test_in_child_keeps_cannot_test_and_fails_a_failure():
    def starved() -> None:
        raise check.CannotTest("starved")

    with pytest.raises(check.CannotTest, match="in the child: starved"):
        contexts.in_child(starved, timeout=10)

    def broken() -> None:
        raise AssertionError("bad")

    with pytest.raises(AssertionError, match="in the child: bad"):
        contexts.in_child(broken, timeout=10)


# -- the scratch filesystem -------------------------------------------------------------------------
def test_choose_prefers_xfs_then_ext4_else_says_what_is_missing():
    assert [c[0] for c in scratchfs.choose(lambda p: f"/sbin/{p}")] == ["xfs", "ext4"]
    assert [c[0] for c in scratchfs.choose(lambda p: "/sbin/mkfs.ext4" if p == "mkfs.ext4" else None)] == ["ext4"]
    with pytest.raises(scratchfs.Unavailable, match=r"neither mkfs.xfs .* nor mkfs.ext4"):
        scratchfs.choose(lambda p: None)


@root
@thp
def test_scratch_fs_maps_a_large_folio_by_pmd_and_leaves_nothing_behind():
    """The filesystem the file contexts get maps a PMD-sized page-cache folio by PMD (where the
    kernel's page cache makes one for it: readahead of a MADV_HUGEPAGE mapping), and is gone
    after close()."""
    fs = scratchfs.ScratchFs()
    try:
        d = fs.ensure()
    except scratchfs.Unavailable as e:
        pytest.skip(str(e))
    top = fs.top
    try:
        assert fs.ensure() == d  # made once
        assert scratchfs.fs_type(d).startswith(fs.fstype)
        dev = next(ln.split()[0] for ln in system.read_text("/proc/mounts").splitlines() if ln.split()[1] == d)
        assert system.read_text(f"/sys/block/{os.path.basename(dev)}/queue/read_ahead_kb").strip() == "0"
        path = os.path.join(d, "f")
        with open(path, "wb") as f:
            f.write(regions.pattern_bytes(0, matrix.PMD_PAGES))
        fd = os.open(path, os.O_RDONLY)
        addr = regions.reserve(matrix.PMD_SIZE)
        try:
            libc.mmap(matrix.PMD_SIZE, abi.PROT_READ, abi.MAP_SHARED | abi.MAP_FIXED, fd, 0, addr=addr)
            libc.madvise(addr, matrix.PMD_SIZE, abi.Madv.HUGEPAGE)
            libc.madvise(addr, matrix.PMD_SIZE, abi.Madv.POPULATE_READ)
            orders = set(regions.folio_orders(addr, matrix.PMD_PAGES))
            if orders != {matrix.order_of(matrix.PMD_SIZE)}:
                pytest.skip(f"the {fs.fstype} page cache made folio orders {orders} (no PMD-sized folio to map)")
            mapped_kb = regions.pmd_mapped_kb(addr, matrix.PMD_SIZE, matrix.FILE)
            assert mapped_kb == matrix.PMD_SIZE // 1024, regions.describe(addr, matrix.PMD_SIZE, matrix.FILE)
        finally:
            libc.munmap(addr, matrix.PMD_SIZE)
            os.close(fd)
    finally:
        fs.close()
    assert not os.path.exists(top)
    assert top not in system.read_text("/proc/mounts", "")


@root
def test_unmountable_image_is_unavailable_and_cleaned_up(monkeypatch):
    fs = scratchfs.ScratchFs()
    monkeypatch.setattr(scratchfs, "choose", lambda: [("xfs", "/bin/false", []), ("ext4", "/bin/false", [])])
    with pytest.raises(scratchfs.Unavailable, match=r"cannot make a scratch filesystem .*: xfs: .*; ext4: "):
        fs.ensure()
    with pytest.raises(scratchfs.Unavailable):
        fs.ensure()  # remembered, not retried
    assert fs.top == ""


def test_in_child_inside_a_case_under_the_runners_watchdog():
    """The collapse_fork cases run in_child inside the case process; with the runner's watchdog
    started, the nested case process must still deliver its verdict (it once closed a reused fd
    number and exited 'without a verdict')."""
    from lib.runner import isolation

    def case() -> None:
        contexts.in_child(lambda: None, timeout=10)
        with pytest.raises(AssertionError, match="in the child: bad"):
            contexts.in_child(lambda: (_ for _ in ()).throw(AssertionError("bad")), timeout=10)

    isolation.start_watchdog()
    try:
        o = isolation.run_isolated(case, 30)
    finally:
        isolation.stop_watchdog()
    assert o.kind == "pass", o.message + o.details


@root
def test_a_kernel_without_the_filesystem_is_named(monkeypatch):
    monkeypatch.setattr(scratchfs, "choose", lambda: [("xfs", "/bin/true", []), ("ext4", "/bin/true", [])])
    monkeypatch.setattr(scratchfs, "kernel_has", lambda fstype: False)
    fs = scratchfs.ScratchFs()
    with pytest.raises(scratchfs.Unavailable, match=r"the kernel has no xfs .*; the kernel has no ext4"):
        fs.ensure()
    assert fs.top == ""
    assert not scratchfs.kernel_has("kmm-no-such-fs")
