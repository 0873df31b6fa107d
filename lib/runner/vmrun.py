"""run_suite.py's other-kernel modes: --kernel, --kernels [--find-first-bad], --compare.

--kernel boots an image with virtme-ng (lib.runner.vm) and runs the same selection inside it, against
the host's root filesystem; the guest writes its report straight into the host's results
folder (a writable shared directory), so nothing travels over the console but live progress.
The console watchdog (lib.runner.vm_console) turns a panic, an Oops/BUG or a stalled guest into a
failure of the case that was running (with the console tail); the VM deadline ends the run as
"cannot test" (the case that was running gets an ``error`` "cannot test: ..." and the cases
never reached stay in summary.json's ``not_run``).  QEMU or vng refusing to start (no kernel
output at all) is a harness problem, reported with what they printed.

Exit codes: lib.runner.exitcodes decides them (kselftest's, or git bisect run's with --bisect).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lib.check import CANNOT_TEST_PREFIX
from lib.runner import compare, exitcodes, matrix_html, report, splats, vm
from lib.runner import results as folders
from lib.runner.vm_console import BootStage, ConsoleLine, Verdict

BISECT_GOOD, BISECT_BAD, BISECT_SKIP = exitcodes.BISECT_GOOD, exitcodes.BISECT_BAD, exitcodes.BISECT_SKIP
#: The kernel died or hung: the case that was running failed.  (The VM deadline is not here:
#: a run too long for its deadline judges nothing.)
DIED = (Verdict.PANIC, Verdict.OOPS, Verdict.BUG, Verdict.STALLED)


def _err(msg: str, bisect: bool = False) -> int:
    """A harness problem or bad input: one line on stderr; exit 2 (abort code under --bisect)."""
    sys.stderr.write(f"run_suite.py: error: {msg}\n")
    return exitcodes.usage_code(bisect)


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
    return host_summary(results, rc)


def host_summary(results: Path, rc: int) -> dict:
    """The ``running`` entry's summary, marked as a host run (written back)."""
    try:
        data = json.loads((results / "summary.json").read_text())
    except (OSError, ValueError):
        data = report.summary([], {}, partial=f"no report (exit {rc})", started=time.time(), exit_code=rc)
    data["vm"] = {"image": RUNNING, "verdict": "ok", "stage": "EXITED", "guest_exit_code": rc,
                  "reason": "ran on the host"}
    report.write_summary(str(results / "summary.json"), data)
    return data


def run_one(args: argparse.Namespace, root: Path, image: str, results: Path, live: bool = True) -> dict:
    """Boot ``image``, run the selection, and return the completed summary (always written).

    Raises vm.VmSetupError when nothing could be started (vng/QEMU/image/command line).
    """
    results.mkdir(parents=True, exist_ok=True)
    if image == RUNNING:
        return run_here(args, root, results)

    def on_line(line: ConsoleLine) -> None:
        if not live:
            return
        if line.kernel:
            if splats.is_splat(line.text):  # the one table (lib.runner.splats)
                print(f"# console: {line.text}", flush=True)
        elif line.text.startswith(("ok ", "not ok ", "# ", "TAP version", "1..")):
            print(line.text, flush=True)

    try:
        outcome = vm.run_in_kernel(
            image, guest_argv(args, root, results), str(results), memory=args.memory, cpus=args.cpus,
            cmdline=args.kernel_cmdline, vm_timeout=args.vm_timeout, on_line=on_line,
            boot_timeout=min(180.0, args.vm_timeout), stall_timeout=min(300.0, args.vm_timeout),
            console_log=str(results / "console.log"), cwd=str(root),
        )
    except KeyboardInterrupt:  # the guest is gone: its reports say so (lib.runner.report.mark_interrupted)
        report.mark_interrupted(str(results), "interrupted (SIGINT)", {"vm.image": image})
        raise
    return complete_summary(outcome, results, image)


def _what_qemu_said(tail: list[str]) -> str:
    """The line(s) of a console that explain why QEMU/vng stopped before the kernel ran."""
    lines = [ln.strip() for ln in tail if ln.strip()]
    said = [ln for ln in lines if not ln.lower().startswith("warning")
            and ("qemu" in ln.lower() or "error" in ln.lower() or "invalid" in ln.lower())]
    return "; ".join((said or lines)[-2:]) or "nothing on the console"


def harness_problem(outcome: vm.VmOutcome, guest_report: bool) -> str:
    """Why this run says nothing about the kernel because of us, or ''.

    - vng/QEMU ended by themselves with an error before the kernel printed a line (not a
      kernel QEMU can load, a vng argument it rejects): what they printed is the reason;
    - the guest command ran and exited 2 without a report: our own guest command line.
    A kernel that starts and then dies or hangs before the guest command is "no boot" instead
    (the commit's business, "cannot test").
    """
    if (outcome.stage <= BootStage.FIRMWARE and outcome.killed is None
            and outcome.host_exit_code not in (None, 0)):
        return (f"QEMU/virtme-ng did not start the kernel (vng exit {outcome.host_exit_code}): "
                f"{_what_qemu_said(outcome.console_tail)}")
    if outcome.stage >= BootStage.GUEST and outcome.guest_exit_code == exitcodes.USAGE and not guest_report:
        guest_said = [ln for ln in outcome.console_tail if "run_suite.py: error:" in ln]
        return ("the guest's run_suite.py rejected its command line"
                + (f": {guest_said[-1].strip()}" if guest_said else " (exit 2)"))
    return ""


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
        "harness_problem": harness_problem(outcome, data is not None),
    }
    booted = outcome.stage >= BootStage.GUEST
    if data is None:
        data = report.summary([], {"vm.image": image}, partial="no report from the guest", started=time.time(),
                              exit_code=1)
    cases = [report.CaseResult(**c) for c in data["cases"]]
    died = outcome.verdict in DIED
    deadline = outcome.verdict is Verdict.TIMEOUT
    tail = "\n".join(outcome.console_tail[-40:])
    if (died or deadline) and booted and outcome.running_case:
        name = outcome.running_case
        if died:
            verdict, msg = "fail", f"kernel {outcome.verdict} during the case: {outcome.reason}"
        else:  # the run was too long for its deadline: nothing is known about this case
            verdict, msg = "error", f"{CANNOT_TEST_PREFIX}{outcome.reason}"
        existing = [c for c in cases if c.name == name]
        if existing:
            existing[0].verdict, existing[0].message, existing[0].kmsg = verdict, msg, tail
        else:
            cases.append(report.CaseResult("vm", name, verdict, msg, kmsg=tail))
    elif died and booted:
        cases.append(report.CaseResult("vm", "guest run", "fail", f"kernel {outcome.verdict}: {outcome.reason}",
                                       kmsg=tail))
    data["cases"] = [c.__dict__ for c in cases]
    totals = report.Totals()
    for c in cases:
        totals.add(c)
    data["totals"] = dict(totals)
    done = {c.name for c in cases}
    if data.get("planned"):  # planned cases the guest never reached (a deadline, a death)
        data["not_run"] = [p["name"] for p in data["planned"] if p["name"] not in done]
    data["vm"] = vminfo
    data.setdefault("kernel", {})["vm.image"] = image
    if died or deadline or not booted:
        data["partial"] = True
        data["partial_reason"] = data.get("partial_reason") or f"kernel {outcome.verdict}: {outcome.reason}"
    data["exit_code"] = exitcodes.decide(data, bisect=False).code
    report.write_summary(str(summary_path), data)
    report.write_atomic(str(results / "junit.xml"), report.junit_from_summary(data))  # the merged results
    return data


def judge(image: str, data: dict) -> tuple[int, str]:
    """A series kernel's git bisect run code (lib.runner.exitcodes decides) and its ``# <label>:
    good/bad/cannot test`` line; HarnessProblem when its run judged nothing because of us."""
    problem = (data.get("vm") or {}).get("harness_problem")
    if problem:
        raise HarnessProblem(f"{image}: {problem}")
    code = exitcodes.decide(data, bisect=True).code
    said = "cannot test" if code == BISECT_SKIP else ["good", "bad"][code == BISECT_BAD]
    return code, f"# {image_label(image)}: {said}"


def _preflight(images: list[str]) -> str:
    """What stops these images from being booted here at all, or ''.

    The images come first (a typo is the likeliest problem), then virtme-ng and QEMU, then root.
    """
    for img in images:
        if img == RUNNING:
            continue
        if not os.path.exists(img):
            return f"kernel image not found: {img}"
        if not os.path.isfile(img) or not os.access(img, os.R_OK):
            return f"kernel image is not a readable file: {img}"
    if all(img == RUNNING for img in images):
        return ""
    missing = [name for name, path in (("virtme-ng (vng)", vm.find_vng()), (vm.QEMU_BINARY, vm.find_qemu()))
               if path is None]
    if missing:
        return (f"booting a kernel image needs virtme-ng and QEMU; not found: {' and '.join(missing)} "
                "(install them with: sudo scripts/setup-vm.sh .venv)")
    if os.geteuid() != 0:
        return "--kernel needs root (the guest runs the suite as root against this root filesystem)"
    return ""


class HarnessProblem(Exception):
    """A run that judged nothing because of the harness (see lib.runner.exitcodes): stop here."""


def main(args: argparse.Namespace, root: Path, series: Callable[..., int] | None = None) -> int:
    """--compare, --kernel or --kernels; ``series`` runs a --kernels series instead of
    :func:`run_series` (lib.runner.parallel's, for -j N)."""
    if args.compare:
        try:
            a, b = (compare.load(x) for x in args.compare)
        except (OSError, ValueError, KeyError) as e:
            return _err(f"--compare: cannot read a run: {e}")
        c = compare.compare(a, b)
        print(compare.format_comparison(c, *args.compare))
        print(matrix_html.compare_page(args.compare, [a, b], args.results), flush=True)
        return c.exit_code
    images = [args.kernel] if args.kernel else list(args.kernels)
    problem = _preflight(images)
    if problem:
        return _err(problem, args.bisect)
    if args.memory is None:  # the serial defaults (with -j, lib.runner.parallel sized the guests)
        args.memory = "2G"
    if args.cpus is None:
        args.cpus = 2
    if args.kernel:
        res = folders.run_dir(args.results, root, f"vm-{image_label(args.kernel)}")  # lib.runner.results decides
        try:
            data = run_one(args, root, args.kernel, res)
        except vm.VmSetupError as e:
            return _err(report.one_line(str(e)), args.bisect)
        folders.finish(res, root)  # `latest` (lib.runner.results decides)
        print(f"# vm: {data['vm']['verdict']} ({data['vm']['reason'] or 'clean'}); results: {res}", flush=True)
        decision = exitcodes.decide(data, bisect=args.bisect)
        if data["vm"].get("harness_problem"):
            return _err(data["vm"]["harness_problem"], args.bisect)
        if args.bisect:
            print(f"# bisect: {decision.line()}", flush=True)
        return decision.code
    try:
        return (series or run_series)(args, root, images)
    except (HarnessProblem, vm.VmSetupError) as e:
        return _err(report.one_line(str(e)), args.bisect)


def run_series(args: argparse.Namespace, root: Path, images: list[str]) -> int:
    """--kernels: each kernel in turn (or a binary search with --find-first-bad), then a table."""
    base = folders.run_dir(args.results, root, "kernels")
    runs: dict[int, dict] = {}
    codes: dict[int, int] = {}  #: each run's git bisect run code (judge)

    def run_index(i: int) -> dict:
        if i not in runs:
            print(f"# ===== kernel {i + 1}/{len(images)}: {images[i]}", flush=True)
            res = folders.kernel_dir(base, i, image_label(images[i]))
            runs[i] = run_one(args, root, images[i], res)
            codes[i], line = judge(images[i], runs[i])
            print(line, flush=True)
        return runs[i]

    first_bad: int | None = None
    if args.find_first_bad:
        def code_of(i: int) -> int:
            run_index(i)
            return codes[i]

        first_bad, verdict_note = find_first_bad(len(images), code_of)
    else:
        for i in range(len(images)):
            run_index(i)
    return finish_series(args, base, images, runs, first_bad, verdict_note if args.find_first_bad else "")


def finish_series(args: argparse.Namespace, base: Path, images: list[str], runs: dict[int, dict],
                  first_bad: int | None, verdict_note: str) -> int:
    """The series' table (printed, table.txt), matrix.html and exit code."""
    labels = [(f"{image_label(images[i])}", runs.get(i)) for i in range(len(images))]
    print(compare.verdict_table(labels))
    base.mkdir(parents=True, exist_ok=True)
    (base / "table.txt").write_text(compare.verdict_table(labels) + "\n")
    print(f"# matrix: {matrix_html.write(base / 'matrix.html', labels)}", flush=True)
    if args.find_first_bad:
        print(f"# first bad: {'none' if first_bad is None else images[first_bad]} ({verdict_note})")
        return exitcodes.first_bad(first_bad is not None, verdict_note)
    return exitcodes.series(runs.values(), bisect=bool(getattr(args, "bisect", False)))


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
