#!/usr/bin/env python3
"""Wall time of a --kernels series, one kernel at a time (-j 1) against several at once (-j N).

For each -j value, runs

    ./run_suite.py SELECTION --kernels IMAGE ... -j N --results <tmp>/jN

and records the wall time from start to exit, the exit code, the load average (before, after,
and the 1-minute figure sampled every 10 s during the run: the machine is shared), the time the
``running`` entry waited for another engineer's run to release the machine-wide run lock
(included in the wall time: the series really waited), each kernel's verdict totals, VM
verdict, boot time and duration (from its summary.json), and whether table.txt, matrix.html
and every per-kernel summary.json/junit.xml were written.

    bench/kernels_parallel.py                          # missing, Debian's 6.1 and 6.12, running; -j 1 then -j 2
    bench/kernels_parallel.py --jobs 2                 # one leg only
    bench/kernels_parallel.py --jobs 2 --into bench/records/X.json   # add a leg to a record

Writes bench/records/<UTC>-<release>-kernels-parallel.json (or updates --into).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402

KERNELS = ["/boot/vmlinuz-6.1.0-57-amd64", "/boot/vmlinuz-6.12.118+deb12-amd64", "running"]
WAIT_MARK = "for another run"  # conftest's "waiting up to Ns for another run (pid P) to end"


def kernel_rows(folder: Path) -> list[dict]:
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            s = json.loads((sub / "summary.json").read_text())
        except (OSError, ValueError) as e:
            rows.append({"folder": sub.name, "error": f"no summary.json: {e}"})
            continue
        v = s.get("vm") or {}
        rows.append({"folder": sub.name, "totals": s.get("totals", {}), "partial": s.get("partial", False),
                     "vm_verdict": v.get("verdict"), "boot_time_s": v.get("boot_time"),
                     "vm_duration_s": v.get("duration"), "suite_duration_s": s.get("duration"),
                     "junit_xml": (sub / "junit.xml").exists()})
    return rows


def run_leg(jobs: int, selection: list[str], kernels: list[str], folder: Path, timeout: float) -> dict:
    argv = [str(ROOT / "run_suite.py"), *selection, "--kernels", *kernels, "-j", str(jobs), f"--results={folder}"]
    print(f"# -j {jobs}: {shlex.join(argv)}", flush=True)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10.0):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    sampler.start()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    lines: list[str] = []
    wait_from = wait_s = None
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)  # a deadline for the whole leg
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if WAIT_MARK in line and wait_from is None:
                wait_from = time.monotonic()
            elif (wait_from is not None and wait_s is None and "TAP version" in line
                  and ("(running)]" in line or not line.startswith("["))):  # the host run has the lock
                wait_s = time.monotonic() - wait_from
        rc = proc.wait()
    finally:
        timer.cancel()
        done.set()
    wall = time.monotonic() - t0
    out = {"jobs": jobs, "command": shlex.join(["./run_suite.py", *argv[1:-1]]), "exit_code": rc,
           "wall_s": round(wall, 1), "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "loadavg_1min_during": {"min": round(min(samples), 2), "max": round(max(samples), 2),
                                   "mean": round(sum(samples) / len(samples), 2)} if samples else None,
           "lock_wait_s": round(wait_s, 1) if wait_s is not None else 0.0,
           "table_txt": (folder / "table.txt").exists(), "matrix_html": (folder / "matrix.html").exists(),
           "kernels": kernel_rows(folder) if folder.is_dir() else [],
           "output_head": [ln for ln in lines if ln.startswith("# ")][:8], "output_tail": lines[-25:]}
    print("\n".join(lines[-25:]), flush=True)
    print(f"# -j {jobs}: {out['wall_s']} s, exit {rc}, load {out['loadavg_before']} -> {out['loadavg_after']}",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("selection", nargs="*", default=["missing"], help="run_suite.py selection (default missing)")
    ap.add_argument("--kernels", nargs="+", default=KERNELS, help="default: Debian's 6.1 and 6.12, running")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="-j values, in this order (default 1 2)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per leg (default 3600 s)")
    ap.add_argument("--into", metavar="RECORD", help="add the legs to this record instead of a new one")
    ap.add_argument("--keep", metavar="DIR", help="keep the series folders under DIR")
    args = ap.parse_args(argv)
    if args.into:
        record = json.loads(Path(args.into).read_text())
        out = Path(args.into)
    else:
        record = {"format": "kmm-conformance-bench-kernels-parallel/1", "machine": machine.describe(), "legs": []}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = ROOT / "bench" / "records" / f"{stamp}-{os.uname().release}-kernels-parallel.json"
    with tempfile.TemporaryDirectory(prefix="kmm-kernels-parallel-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for j in args.jobs:
            folder = base / f"j{j}"
            if folder.exists():
                folder = base / f"j{j}-{time.strftime('%H%M%S')}"
            record["legs"].append(run_leg(j, args.selection, args.kernels, folder, args.timeout))
            record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            out.write_text(json.dumps(record, indent=1) + "\n")  # after each leg: a long run keeps its figures
    print(machine.headline(record["machine"]))
    for leg in record["legs"]:
        print(f"-j {leg['jobs']}: {leg['wall_s']:8.1f} s  exit {leg['exit_code']}  load before {leg['loadavg_before']}"
              f"  during {leg['loadavg_1min_during']}  lock wait {leg['lock_wait_s']} s")
    print(f"# record: {out}")
    return 0 if all(leg["exit_code"] in (0, 1) for leg in record["legs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
