#!/usr/bin/env python3
"""Suite wall time: per area and in total, cases per second, peak memory.

Runs ``./run_suite.py <area> --results <tmp>/<area>`` for each area (one after the other; each
run takes the machine-wide run lock, so the time spent waiting for another engineer's run is
measured separately and subtracted), reads the run's summary.json (cases, verdicts, per-case
durations) and records:

  wall_s        time from start to exit of run_suite.py, minus the time it waited for the lock
  cases, cases_per_s, verdict totals, sum of case durations, the slowest cases
  peak_rss_kib  the largest resident set of any one process of the run (ru_maxrss of the
                waited-for descendants, measured in a fresh intermediate process per area so
                areas do not see each other's peaks)

Prints a table and writes results/bench/<UTC>-<release>-suite.json.

    bench/suite_time.py                 # every area
    bench/suite_time.py missing cow     # some areas
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402

WAIT_MARK = "for another run"  # conftest's "# waiting up to Ns for another run (pid P) to end"


def cases_dir() -> Path:
    return Path(os.environ.get("KMM_CASES", ROOT / "cases")).resolve()


def areas() -> list[str]:
    return sorted(p.name for p in cases_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def run_area(area: str, results: Path, timeout: float, extra: list[str]) -> dict:
    """Run one area in this (fresh) process and measure it; returns the figures."""
    argv = [sys.executable, str(ROOT / "run_suite.py"), area, f"--results={results}", *extra]
    t0 = time.monotonic()
    wait_from = wait_until = None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if wait_from is None and WAIT_MARK in line:
                wait_from = time.monotonic()
            elif wait_from is not None and wait_until is None:
                wait_until = time.monotonic()  # the first line after the lock is held
            if time.monotonic() - t0 > timeout:
                proc.kill()
                break
        rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.monotonic() - t0
    wait_s = (wait_until or time.monotonic()) - wait_from if wait_from is not None else 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"area": area, "exit_code": rc, "wall_s": round(wall - wait_s, 3), "lock_wait_s": round(wait_s, 3),
           "peak_rss_kib": ru.ru_maxrss, "cpu_user_s": round(ru.ru_utime, 2), "cpu_sys_s": round(ru.ru_stime, 2)}
    try:
        summary = json.loads((results / "summary.json").read_text())
    except (OSError, ValueError) as e:
        out["error"] = f"no summary.json: {e}; last output: {''.join(lines[-3:]).strip()[:300]}"
        return out
    cases = summary.get("cases", [])
    durations = sorted(((c.get("duration") or 0.0, c.get("name", "?")) for c in cases), reverse=True)
    out.update({
        "cases": len(cases),
        "totals": summary.get("totals", {}),
        "partial": summary.get("partial", False),
        "suite_duration_s": summary.get("duration"),
        "case_time_s": round(sum(d for d, _ in durations), 3),
        "cases_per_s": round(len(cases) / out["wall_s"], 2) if out["wall_s"] > 0 else None,
        "slowest": [{"name": n, "s": round(d, 3)} for d, n in durations[:5]],
    })
    return out


def measure_area(area: str, results: Path, timeout: float, extra: list[str]) -> dict:
    """Measure in a fresh child process, so RUSAGE_CHILDREN covers this area only."""
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", area, str(results),
                        str(timeout), json.dumps(extra)],
                       capture_output=True, text=True, cwd=ROOT, timeout=timeout + 60)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"area": area, "error": f"measurement failed (exit {r.returncode}): {r.stderr.strip()[-300:]}"}


def fmt_table(rows: list[dict], total: dict) -> str:
    head = f"{'area':14} {'cases':>6} {'pass':>5} {'skip':>5} {'fail':>5} {'wall s':>8} {'cases/s':>8} " \
           f"{'peak RSS':>9} {'lock wait':>9}"
    lines = [head, "-" * len(head)]
    for r in [*rows, total]:
        if "error" in r and "cases" not in r:
            lines.append(f"{r['area']:14} error: {r['error']}")
            continue
        t = r.get("totals", {})
        fail = t.get("fail", 0) + t.get("error", 0) + t.get("xpass", 0)
        lines.append(f"{r['area']:14} {r['cases']:>6} {t.get('pass', 0):>5} {t.get('skip', 0):>5} {fail:>5} "
                     f"{r['wall_s']:>8.1f} {r['cases_per_s'] or 0:>8.1f} {r['peak_rss_kib'] / 1024:>7.0f}Mi "
                     f"{r.get('lock_wait_s', 0):>8.1f}s")
    return "\n".join(lines)


def totals(rows: list[dict]) -> dict:
    good = [r for r in rows if "cases" in r]
    wall = sum(r["wall_s"] for r in good)
    tot: dict[str, int] = {}
    for r in good:
        for k, v in r.get("totals", {}).items():
            tot[k] = tot.get(k, 0) + v
    cases = sum(r["cases"] for r in good)
    return {"area": "total", "cases": cases, "totals": tot, "wall_s": round(wall, 3),
            "lock_wait_s": round(sum(r.get("lock_wait_s", 0) for r in good), 3),
            "cases_per_s": round(cases / wall, 2) if wall else None,
            "peak_rss_kib": max((r["peak_rss_kib"] for r in good), default=0)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:
        area, results, timeout, extra = argv[1], Path(argv[2]), float(argv[3]), json.loads(argv[4])
        print(json.dumps(run_area(area, results, timeout, extra)), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("areas", nargs="*", help="default: every area")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per area (default 1800 s)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="where the JSON record goes")
    ap.add_argument("--keep", metavar="DIR", help="keep the per-area result folders under DIR")
    ap.add_argument("--suite-arg", action="append", default=[], help="extra run_suite.py argument")
    args = ap.parse_args(argv)
    known = areas()
    selected = args.areas or known
    bad = [a for a in selected if a not in known]
    if bad:
        ap.error(f"unknown area(s) {bad}; areas: {', '.join(known)}")

    mach = machine.describe()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmm-suite-time-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for a in selected:
            rows.append(measure_area(a, base / a, args.timeout, args.suite_arg))
            print(fmt_table([rows[-1]], totals(rows[-1:])).splitlines()[2], flush=True)
    total = totals(rows)
    record = {
        "format": "kmm-conformance-bench-suite-time/1",
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": mach,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "areas": rows,
        "total": total,
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) / f"{stamp}-{mach['kernel_release']}-suite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print()
    print(machine.headline(mach))
    print(fmt_table(rows, total))
    print("peak RSS: the largest single process of the area's run (ru_maxrss of its descendants)")
    print(f"# record: {out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
