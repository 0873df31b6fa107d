"""Smoke tests of the benchmark harnesses (bench/): they run with tiny sizes and write valid
JSON records.  No figure is asserted: speed targets live in the benchmarks, never in timed
tests (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fault_service, suite_time
from lib.kernel import uffd

ROOT = Path(__file__).resolve().parent.parent
needs_uffd = pytest.mark.skipif(not uffd.probe().syscall, reason="userfaultfd(2) not available")


def _record(out: Path, suffix: str = ".json") -> dict:
    files = sorted(out.glob(f"*{suffix}"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@needs_uffd
def test_fault_service_tiny_run_writes_a_record(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "bench" / "fault_service.py"), "--jobs", "copy,zero,wpasync",
            "--placements", "thread,process", "--sizes", "4k", "--threads", "1,2", "--affinity", "free",
            "--reps", "1", "--pages4k", "8", "--out", str(tmp_path)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = _record(tmp_path)
    assert rec["format"].startswith("kmm-conformance-bench-fault-service/")
    assert rec["machine"]["kernel_release"] == os.uname().release
    # copy, zero x 2 placements x 2 thread counts, plus wpasync x 2 thread counts
    assert len(rec["rows"]) == 10
    for row in rec["rows"]:
        assert {"job", "placement", "page", "threads", "affinity", "python", "c", "ratio"} <= set(row)
        assert "us_per_fault" in row["python"], row["python"]
        assert row["python"]["runs"][0]["faults"] == 8
        if row["job"] != "wpasync":
            assert row["python"]["runs"][0]["served"] == 8
        if not row["c"].get("skipped"):  # a compiler exists: the C side ran the same job
            assert "us_per_fault" in row["c"], row["c"]
            assert row["c"]["runs"][0]["served"] == (0 if row["job"] == "wpasync" else 8)
    assert "py/C" in r.stdout


def test_summarise_and_table_without_runs() -> None:
    assert fault_service.summarise([{"error": "boom"}], 8)["error"] == "boom"
    s = fault_service.summarise([{"elapsed_ns": 8000, "faults": 8, "served": 8, "errors": []}] * 3, 8)
    assert s["us_per_fault"] == 1.0 and s["faults_per_s"] == 1_000_000 and s["n"] == 3
    rows = [{"job": "zero", "placement": "thread", "page": "2m", "threads": 1, "affinity": "free",
             "skip": "hugetlb has no UFFDIO_ZEROPAGE"}]
    assert "skipped: hugetlb has no UFFDIO_ZEROPAGE" in fault_service.fmt_table(rows)


def test_suite_time_on_a_synthetic_tree(tmp_path: Path) -> None:
    env = dict(os.environ, KMM_CASES=str(ROOT / "tests" / "data" / "runner" / "passing"),
               KMM_STATE_DIR=str(tmp_path / "state"))  # a private run lock: never waits for others
    argv = [sys.executable, str(ROOT / "bench" / "suite_time.py"), "--out", str(tmp_path / "out")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rec = _record(tmp_path / "out", "-suite.json")
    assert rec["format"].startswith("kmm-conformance-bench-suite-time/")
    (area,) = rec["areas"]
    assert area["area"] == "demo" and area["cases"] == 2 and area["exit_code"] == 0
    assert area["wall_s"] > 0 and area["peak_rss_kib"] > 0 and area["cases_per_s"] > 0
    assert rec["total"]["cases"] == 2
    assert suite_time.totals(rec["areas"])["wall_s"] == area["wall_s"]


def _row(py: float, c: float, **cell) -> dict:
    base = dict(fault_service.TARGET_CELL)
    base.update(cell)
    runs = ([{"elapsed_ns": py * 1000}], [{"elapsed_ns": c * 1000}])
    return {**base, "python": {"us_per_fault": py}, "c": {"us_per_fault": c}, "ratio": round(py / c, 3),
            "paired": fault_service.paired_ratios(*runs)}


def test_paired_ratios_skip_failed_runs() -> None:
    py = [{"elapsed_ns": 150}, {"error": "boom"}, {"elapsed_ns": 130}, {"elapsed_ns": 100, "errors": ["x"]}]
    c = [{"elapsed_ns": 100}, {"elapsed_ns": 100}, {"elapsed_ns": 100}, {"elapsed_ns": 100}]
    assert fault_service.paired_ratios(py, c) == {"median": 1.4, "min": 1.3, "max": 1.5, "n": 2}
    assert fault_service.paired_ratios([{"error": "boom"}], c) is None


def test_target_line_says_met_or_not() -> None:
    assert fault_service.target_line([_row(18.0, 12.0)]).endswith(": met")
    assert fault_service.target_line([_row(19.0, 12.0)]).endswith("NOT met")
    assert fault_service.target_line([_row(10.0, 12.0, affinity="free")]) is None  # not the target cell


def test_compare_against_an_earlier_record() -> None:
    old = {"started_utc": "then", "python": "3.11", "rows": [_row(36.0, 12.0)]}
    out = fault_service.fmt_compare([_row(18.0, 12.0)], old, "old.json")
    assert "old.json" in out and "-50%" in out and "3.00" in out and "1.50" in out


def test_unreadable_compare_record_is_a_usage_error(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "bench" / "fault_service.py"), "--compare", str(tmp_path / "nope.json")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--compare" in r.stderr
