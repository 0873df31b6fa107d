"""run_suite.py's other-kernel modes: --kernel, --kernels [--find-first-bad], --compare.

--kernel boots an image with virtme-ng (lib.vm) and runs the same selection inside it, against
the host's root filesystem; the guest writes its report straight into the host's results
folder (a writable shared directory), so nothing travels over the console but live progress.
The console watchdog (lib.vm_console) turns a panic, an Oops/BUG, a hung boot or a stalled
guest into a verdict; the case that was running is reported failed with the console tail.

Exit codes (--bisect): 0 every selected case passed or skipped, 1 a case failed or the kernel
died or splatted during a case, 125 the kernel did not boot, the harness broke, or everything
skipped.  Without --bisect: the guest run's kselftest code, 1 when the kernel died.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lib import compare, report, vm
from lib.vm_console import BootStage, ConsoleLine, Verdict

BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125
DIED = (Verdict.PANIC, Verdict.OOPS, Verdict.BUG, Verdict.STALLED, Verdict.TIMEOUT)


def _err(msg: str) -> int:
    sys.stderr.write(f"run_suite.py: error: {msg}\n")
    return 2


def guest_argv(args: argparse.Namespace, root: Path, results: Path) -> list[str]:
    argv = [sys.executable, str(root / "run_suite.py"), f"--results={results}", f"--timeout={args.timeout}",
            f"--repeat={args.repeat}", *args.select]
    if args.keyword:
        argv += ["-k", args.keyword]
    if args.no_swap_setup:
        argv.append("--no-swap-setup")
    return argv


def image_label(image: str) -> str:
    if image == RUNNING:
        return f"{os.uname().release} (running)"
    return os.path.basename(image).removeprefix("vmlinuz-") or image


RUNNING = "running"  # the image name that means "the kernel this machine runs" (no VM)


def run_here(args: argparse.Namespace, root: Path, results: Path) -> dict:
    """--kernels entry ``running``: the same selection on the running kernel, no VM."""
    import subprocess

    argv = guest_argv(args, root, results)
    rc = subprocess.run(argv, cwd=root, check=False).returncode
    try:
        data = json.loads((results / "summary.json").read_text())
    except (OSError, ValueError):
        data = report.summary([], {}, partial=f"no report (exit {rc})", started=time.time(), exit_code=rc)
    data["vm"] = {"image": RUNNING, "verdict": "ok", "stage": "EXITED", "guest_exit_code": rc,
                  "reason": "ran on the host"}
    report.write_summary(str(results / "summary.json"), data)
    return data


def run_one(args: argparse.Namespace, root: Path, image: str, results: Path, live: bool = True) -> dict:
    """Boot ``image``, run the selection, and return the completed summary (always written)."""
    results.mkdir(parents=True, exist_ok=True)
    if image == RUNNING:
        return run_here(args, root, results)

    def on_line(line: ConsoleLine) -> None:
        if not live:
            return
        if line.kernel:
            if any(k in line.text for k in ("WARNING:", "BUG:", "Oops", "Kernel panic", "Bad page")):
                print(f"# console: {line.text}", flush=True)
        elif line.text.startswith(("ok ", "not ok ", "# ", "TAP version", "1..")):
            print(line.text, flush=True)

    outcome = vm.run_in_kernel(
        image, guest_argv(args, root, results), str(results), memory=args.memory, cpus=args.cpus,
        cmdline=args.kernel_cmdline, vm_timeout=args.vm_timeout, on_line=on_line,
        boot_timeout=min(180.0, args.vm_timeout), stall_timeout=min(300.0, args.vm_timeout),
        console_log=str(results / "console.log"), cwd=str(root),
    )
    return complete_summary(outcome, results, image)


def complete_summary(outcome: vm.VmOutcome, results: Path, image: str) -> dict:
    """Merge the guest's report with what the console watchdog saw; rewrite the reports."""
    summary_path = results / "summary.json"
    try:
        data = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        data = None
    vminfo = {
        "image": image, "verdict": str(outcome.verdict), "reason": outcome.reason,
        "guest_exit_code": outcome.guest_exit_code, "boot_time": outcome.boot_time,
        "duration": round(outcome.duration, 3), "stage": outcome.stage.name, "kvm": outcome.kvm_used,
        "running_case": outcome.running_case, "console_tail": outcome.console_tail[-60:],
    }
    booted = outcome.stage >= BootStage.GUEST
    if data is None:
        data = report.summary([], {"vm.image": image}, partial="no report from the guest", started=time.time(),
                              exit_code=1)
    cases = [report.CaseResult(**c) for c in data["cases"]]
    died = outcome.verdict in DIED
    if died and booted and outcome.running_case:
        name = outcome.running_case
        tail = "\n".join(outcome.console_tail[-40:])
        msg = f"kernel {outcome.verdict} during the case: {outcome.reason}"
        existing = [c for c in cases if c.name == name]
        if existing:
            existing[0].verdict, existing[0].message, existing[0].kmsg = "fail", msg, tail
        else:
            cases.append(report.CaseResult("vm", name, "fail", msg, kmsg=tail))
    elif died and booted:
        cases.append(report.CaseResult("vm", "guest run", "fail", f"kernel {outcome.verdict}: {outcome.reason}",
                                       kmsg="\n".join(outcome.console_tail[-40:])))
    data["cases"] = [c.__dict__ for c in cases]
    totals = report.Totals()
    for c in cases:
        totals.add(c)
    data["totals"] = dict(totals)
    data["vm"] = vminfo
    data["kernel"]["vm.image"] = image
    if died or not booted:
        data["partial"] = True
        data["partial_reason"] = data.get("partial_reason") or f"kernel {outcome.verdict}: {outcome.reason}"
    report.write_summary(str(summary_path), data)
    if died and booted:  # the guest could not finish its JUnit: write it from the merged results
        report.write_atomic(str(results / "junit.xml"), report.junit_xml(cases, data["kernel"]))
    return data


def bisect_verdict(data: dict) -> int:
    vmv = data.get("vm", {})
    if vmv.get("stage") not in ("GUEST", "EXITED"):
        return BISECT_SKIP  # no boot: cannot test
    t = data["totals"]
    if t["fail"] or t["xpass"] or any(c["verdict"] == "error" and not c["message"].startswith("harness error")
                                      for c in data["cases"]):
        return BISECT_BAD
    if any(c["verdict"] == "error" for c in data["cases"]):
        return BISECT_SKIP
    if vmv.get("guest_exit_code") is None and vmv.get("verdict") != "ok":
        return BISECT_SKIP
    ran = sum(t.values())
    if ran == 0 or t["skip"] == ran:
        return BISECT_SKIP
    return BISECT_GOOD


def plain_verdict(data: dict) -> int:
    if data.get("vm", {}).get("stage") not in ("GUEST", "EXITED"):
        return 1
    t = data["totals"]
    if t["fail"] or t["error"] or t["xpass"] or data.get("partial"):
        return 1
    ran = sum(t.values())
    return 4 if ran == 0 or t["skip"] == ran else 0


def results_for(root: Path, args: argparse.Namespace, image: str, suffix: str = "") -> Path:
    if args.results:
        base = Path(args.results).resolve()
        return base / image_label(image) if suffix else base
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return root / "results" / f"{stamp}-vm-{image_label(image)}"


def _preflight(images: list[str]) -> str:
    if vm.find_vng() is None or vm.find_qemu() is None:
        return "virtme-ng/QEMU not found: " + vm.install_hint().splitlines()[0]
    for img in images:
        if img != RUNNING and not os.path.isfile(img):
            return f"kernel image not found: {img}"
    if os.geteuid() != 0:
        return "--kernel needs root (the guest runs the suite as root against this root filesystem)"
    return ""


def main(args: argparse.Namespace, root: Path) -> int:
    if args.compare:
        try:
            a, b = (compare.load(x) for x in args.compare)
        except (OSError, ValueError, KeyError) as e:
            return _err(f"--compare: cannot read a run: {e}")
        c = compare.compare(a, b)
        print(compare.format_comparison(c, *args.compare))
        return c.exit_code
    images = [args.kernel] if args.kernel else list(args.kernels)
    problem = _preflight(images)
    if problem:
        return _err(problem)
    if args.kernel:
        res = results_for(root, args, args.kernel)
        data = run_one(args, root, args.kernel, res)
        _finish_run_folder(root, res)
        print(f"# vm: {data['vm']['verdict']} ({data['vm']['reason'] or 'clean'}); results: {res}", flush=True)
        return bisect_verdict(data) if args.bisect else plain_verdict(data)
    return run_series(args, root, images)


def _finish_run_folder(root: Path, res: Path) -> None:
    latest = root / "results" / "latest"
    if res.parent == root / "results":
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(res.name)
        except OSError:
            pass


def run_series(args: argparse.Namespace, root: Path, images: list[str]) -> int:
    """--kernels: each kernel in turn (or a binary search with --find-first-bad), then a table."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = Path(args.results).resolve() if args.results else root / "results" / f"{stamp}-kernels"
    runs: dict[int, dict] = {}

    def run_index(i: int) -> dict:
        if i not in runs:
            print(f"# ===== kernel {i + 1}/{len(images)}: {images[i]}", flush=True)
            res = base / f"{i:02d}-{image_label(images[i]).replace(' ', '-')}"
            if res.exists():
                shutil.rmtree(res)
            runs[i] = run_one(args, root, images[i], res)
            print(f"# {image_label(images[i])}: {['good', 'bad'][bisect_verdict(runs[i]) == BISECT_BAD]}"
                  if bisect_verdict(runs[i]) != BISECT_SKIP else f"# {image_label(images[i])}: cannot test",
                  flush=True)
        return runs[i]

    first_bad: int | None = None
    if args.find_first_bad:
        first_bad, verdict_note = find_first_bad(len(images), lambda i: bisect_verdict(run_index(i)))
    else:
        for i in range(len(images)):
            run_index(i)
    labels = [(f"{image_label(images[i])}", runs.get(i)) for i in range(len(images))]
    print(compare.verdict_table(labels))
    base.mkdir(parents=True, exist_ok=True)
    (base / "table.txt").write_text(compare.verdict_table(labels) + "\n")
    if args.find_first_bad:
        if first_bad is None:
            print(f"# first bad: none ({verdict_note})")
            return BISECT_SKIP if "cannot" in verdict_note else 0
        print(f"# first bad: {images[first_bad]} ({verdict_note})")
        return 1
    codes = [bisect_verdict(r) for r in runs.values()]
    return 1 if BISECT_BAD in codes else 0


def find_first_bad(n: int, test) -> tuple[int | None, str]:
    """The first index whose test() is BAD in an ordered list where good precedes bad.

    test(i) returns 0 (good), 1 (bad) or 125 (cannot test: the search steps around it, as
    `git bisect skip` does).
    """
    last = test(n - 1)
    if last == BISECT_SKIP:
        # look for a testable bad one from the end
        idx = n - 2
        while idx >= 0 and (last := test(idx)) == BISECT_SKIP:
            idx -= 1
        if idx < 0:
            return None, "no kernel could be tested"
        hi = idx
    else:
        hi = n - 1
    if last != BISECT_BAD:
        return None, "the newest testable kernel is good"
    lo = -1  # index known (or assumed) good
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = test(mid)
        probe = mid
        while v == BISECT_SKIP and probe + 1 < hi:
            probe += 1
            v = test(probe)
        if v == BISECT_SKIP:
            # everything between mid and hi is untestable: the first bad is somewhere in (lo, hi]
            return hi, "neighbours could not be tested"
        if v == BISECT_BAD:
            hi = probe
        else:
            lo = probe
    return hi, "found"
