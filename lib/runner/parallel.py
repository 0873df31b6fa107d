"""``run_suite.py --kernels IMAGE ... -j N``: up to N kernels at once.

Each kernel runs in a child ``run_suite.py`` of its own, exactly the command a one-at-a-time
series would run for it: ``run_suite.py SELECTION --kernel IMAGE --results=<its folder>`` for
an image (boot, console watchdog, merged report: lib.runner.vmrun.run_one), and
``run_suite.py SELECTION --results=<its folder>`` for ``running`` (the host run, no VM).  So a
kernel's verdicts and its folder (``<series>/NN-<label>/``: summary.json, junit.xml,
console.log, run.log) are the same as in a serial series; only the order in which the kernels
finish differs, and nothing a child writes depends on it.  The child's output reaches the
terminal line by line, prefixed with ``[<label>]``.

The split rule (:func:`split`), from ``nproc`` and ``MemAvailable`` when the run starts:

* a *slot* is one kernel running: a guest, or the ``running`` entry (the host run counts as one
  job: it uses the host's CPUs and memory as a guest would);
  the number of slots is ``min(N, number of kernels)``;
* memory: ``HOST_RESERVE_MIB`` stay for the host; the rest is divided between the slots, and a
  guest gets its slot's share minus ``QEMU_OVERHEAD_MIB`` for QEMU itself, at most
  ``DEFAULT_GUEST_MIB`` (the serial default, 2G), rounded down to 64 MiB.  When a share would
  leave a guest less than ``MIN_GUEST_MIB``, fewer kernels run at once (said on a ``# -j:``
  line).  An explicit ``--memory`` wins for the guest's size; the number at once is then capped
  so that the guests plus QEMU's overhead fit in what is available (never below one);
* CPUs: ``max(1, nproc // slots)`` per guest, at most ``DEFAULT_GUEST_CPUS`` (2); an explicit
  ``--cpus`` wins (CPUs may then be shared: that only slows the guests down).

``--find-first-bad`` with N > 1 runs a k-ary search (:func:`find_first_bad_kary`): each round
splits the untested kernels between the last known good and the first known bad into N+1 parts
and tests the N split points at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from lib.runner import report, vm, vmrun
from lib.runner import results as folders

HOST_RESERVE_MIB = 1024  # for the host itself, whatever the slots take
QEMU_OVERHEAD_MIB = 512  # per guest, beyond the guest's memory: QEMU, its TCG translation cache
MIN_GUEST_MIB = 512  # below this a guest cannot boot and run the suite
DEFAULT_GUEST_MIB = 2048  # what one guest gets by default (the serial series' 2G)
DEFAULT_GUEST_CPUS = 2
STOP_GRACE_S = 120.0  # a stopped child's time to write its partial report and end its guest

GOOD, BAD, SKIP = vmrun.BISECT_GOOD, vmrun.BISECT_BAD, vmrun.BISECT_SKIP


# --------------------------------------------------------------------------- the split


@dataclass(frozen=True)
class Plan:
    jobs: int  #: kernels at once
    memory: str  #: per guest, for vng --memory
    cpus: int  #: per guest
    note: str = ""  #: why fewer kernels run at once than asked, or ''


def parse_mib(text: str) -> int | None:
    """``--memory`` as MiB (QEMU's -m syntax: a number of MiB, or with a K/M/G/T suffix)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KkMmGgTt]?)[iI]?[bB]?\s*", text)
    if not m:
        return None
    value = float(m.group(1)) * {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]
    return int(value)


def machine() -> tuple[int, int]:
    """(CPUs this process may use, MemAvailable in MiB)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    avail_kib = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail_kib = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    return cpus, avail_kib // 1024


def split(jobs: int, nproc: int, avail_mib: int, memory: str | None = None, cpus: int | None = None) -> Plan:
    """The guests' size and how many kernels run at once (the rule in this module's docstring)."""
    usable = max(0, avail_mib - HOST_RESERVE_MIB)
    asked = jobs = max(1, jobs)
    if memory is not None:
        mib = parse_mib(memory)
        fit = max(1, usable // ((mib or MIN_GUEST_MIB) + QEMU_OVERHEAD_MIB))
        jobs = min(jobs, fit)
        size = memory
    else:
        while jobs > 1 and usable // jobs - QEMU_OVERHEAD_MIB < MIN_GUEST_MIB:
            jobs -= 1
        share = usable // jobs - QEMU_OVERHEAD_MIB
        size = f"{max(256, min(DEFAULT_GUEST_MIB, share)) // 64 * 64}M"
    note = ""
    if jobs < asked:
        each = f"--memory {memory}" if memory is not None else f"at least {MIN_GUEST_MIB} MiB"
        note = (f"{jobs} kernel(s) at once, not {asked}: {avail_mib} MiB available, {HOST_RESERVE_MIB} MiB "
                f"kept for the host, {QEMU_OVERHEAD_MIB} MiB per guest for QEMU, {each} per guest")
    return Plan(jobs, size, cpus if cpus is not None else min(DEFAULT_GUEST_CPUS, max(1, nproc // jobs)), note)


def size_guests(args: argparse.Namespace, images: list[str]) -> Plan:
    """Fill in args.memory/args.cpus (unless given) and args.jobs from :func:`split`."""
    nproc, avail = machine()
    asked = getattr(args, "jobs", None) or 1
    plan = split(min(asked, len(images)) or 1, nproc, avail, args.memory, args.cpus)
    args.memory, args.cpus, args.jobs = plan.memory, plan.cpus, plan.jobs
    return plan


# --------------------------------------------------------------------------- k-ary search


def split_points(candidates: list[int], parts: int) -> list[int]:
    """``parts`` indices splitting ``candidates`` (sorted) into parts+1 runs of equal length."""
    k = min(parts, len(candidates))
    return [candidates[j * len(candidates) // (k + 1)] for j in range(1, k + 1)]


def find_first_bad_kary(n: int, test_batch: Callable[[list[int]], dict[int, int]],
                        width: int) -> tuple[int | None, str, int]:
    """The first BAD index of an ordered list where good precedes bad, testing up to ``width``
    indices per round: (index or None, how it ended, rounds).

    test_batch(indices) returns each index's verdict: 0 good, 1 bad, 125 cannot test (stepped
    around, as `git bisect skip` does).  Round one tests the newest kernel and width-1 points
    splitting the rest; each later round splits the untested kernels between the last good and
    the first bad into width+1 parts and tests the width split points.  Answers as
    lib.runner.vmrun.find_first_bad (width 1 is a binary search).
    """
    v: dict[int, int] = {}
    rounds = 0

    def run(indices: Iterable[int]) -> None:
        nonlocal rounds
        todo = sorted({i for i in indices if i not in v})
        if todo:
            rounds += 1
            got = test_batch(todo)
            v.update({i: got[i] for i in todo})

    while True:
        top = n - 1  # the newest kernel not known to be untestable
        while top >= 0 and v.get(top) == SKIP:
            top -= 1
        if top < 0:
            return None, "no kernel could be tested", rounds
        if top not in v:
            run([top, *split_points(list(range(top)), width - 1)])
            continue
        if v[top] == GOOD:
            return None, "the newest testable kernel is good", rounds
        hi = min(i for i, x in v.items() if x == BAD)
        lo = max((i for i, x in v.items() if x == GOOD and i < hi), default=-1)
        if hi - lo == 1:
            return hi, "found", rounds
        untested = [i for i in range(lo + 1, hi) if i not in v]
        if not untested:  # everything between the last good and the first bad is untestable
            return hi, "neighbours could not be tested", rounds
        run(split_points(untested, width))


# --------------------------------------------------------------------------- children


class Printer:
    """Lines from several children, whole and prefixed; a closed stdout ends nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, line: str, stream=None) -> None:
        with self._lock:
            try:
                out = stream or sys.stdout
                out.write(line if line.endswith("\n") else line + "\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                pass


def child_argv(args: argparse.Namespace, root: Path, image: str, folder: Path) -> list[str]:
    """The run_suite.py command a serial series runs for this kernel, as a command line."""
    argv = vmrun.guest_argv(args, root, folder)
    if image != vmrun.RUNNING:
        argv += [f"--kernel={image}", f"--memory={args.memory}", f"--cpus={args.cpus}",
                 f"--vm-timeout={args.vm_timeout}"]
        if args.kernel_cmdline:
            argv.append(f"--kernel-cmdline={args.kernel_cmdline}")
    return argv


class Series:
    """The kernels of one series, run by up to ``jobs`` children at once."""

    def __init__(self, args: argparse.Namespace, root: Path, images: list[str], base: Path) -> None:
        self.args, self.root, self.images, self.base = args, root, images, base
        self.runs: dict[int, dict] = {}
        self.codes: dict[int, int] = {}  #: each kernel's git bisect run code (vmrun.judge)
        self.say = Printer()
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = False
        self._lock = threading.Lock()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if any(img != vmrun.RUNNING for img in images) and self.env.get(vm.KVM_ENV) not in ("0", "1"):
            # probed once here, not once per child
            self.env[vm.KVM_ENV] = "1" if vm.detect_kvm_usable() else "0"

    def label(self, i: int) -> str:
        return vmrun.image_label(self.images[i])

    def run_kernel(self, i: int) -> dict:
        image = self.images[i]
        folder = folders.kernel_dir(self.base, i, self.label(i))
        argv = child_argv(self.args, self.root, image, folder)
        prefix = f"[{self.label(i)}] "
        with self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            self.say(f"# ===== kernel {i + 1}/{len(self.images)}: {image} (results: {folder})")
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", process_group=0)  # Ctrl-C: to us only
            self.children[i] = proc
        errors: list[str] = []

        def pump(stream, out, keep: list[str] | None) -> None:
            for line in stream:
                if keep is not None:
                    keep.append(line.rstrip("\n"))
                    del keep[:-20]
                    if self.stopping:  # what a child says while it is being stopped (a signal that
                        continue  # landed in a fork hook prints "Exception ignored ... Traceback")
                self.say(prefix + line, out)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout, None), daemon=True),
                 threading.Thread(target=pump, args=(proc.stderr, sys.stderr, errors), daemon=True)]
        for t in pumps:
            t.start()
        rc = proc.wait()
        for t in pumps:
            t.join()
        with self._lock:
            self.children.pop(i, None)
        data = self.collect(i, folder, rc, errors)
        self.codes[i], line = vmrun.judge(image, data)
        self.say(line)
        return data

    def collect(self, i: int, folder: Path, rc: int, errors: list[str]) -> dict:
        """The kernel's completed summary, as the serial series would have it."""
        image = self.images[i]
        if image == vmrun.RUNNING:
            return vmrun.host_summary(folder, rc)
        try:
            return json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            pass
        said = [e.removeprefix("run_suite.py: error: ") for e in errors if e.startswith("run_suite.py: error: ")]
        if rc == 2 and said:  # nothing booted: what the serial series raises as VmSetupError
            raise vm.VmSetupError(said[-1])
        data = report.summary([], {"vm.image": image}, partial=f"no report (run_suite.py --kernel exit {rc})",
                              started=time.time(), exit_code=1)
        data["vm"] = {"image": image, "verdict": "no report", "reason": report.one_line(" ".join(errors[-2:])),
                      "stage": "NONE", "guest_exit_code": None, "harness_problem": ""}
        report.write_summary(str(folder / "summary.json"), data)
        return data

    def stop(self) -> None:
        """SIGINT every child (each writes its partial report and ends its guest); then wait,
        with a deadline, and SIGKILL what is left."""
        with self._lock:
            self.stopping = True
            procs = list(self.children.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                vm.kill_process_tree(p.pid)

    def batch(self, indices: list[int]) -> dict[int, dict]:
        """Run these kernels, up to args.jobs at once; a harness problem or an interruption
        stops the others (their reports say so)."""
        todo = [i for i in indices if i not in self.runs]
        with ThreadPoolExecutor(max_workers=max(1, min(self.args.jobs, len(todo) or 1))) as pool:
            futures: dict[Future, int] = {pool.submit(self.run_kernel, i): i for i in todo}
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    self.stop()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise failed[0].exception()  # type: ignore[misc]
            except KeyboardInterrupt:
                self.stop()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            for f, i in futures.items():
                self.runs[i] = f.result()
        return {i: self.runs[i] for i in indices}


def main(args: argparse.Namespace, root: Path) -> int:
    """``run_suite.py --kernels ... -j N``: size the guests (:func:`split`), then
    lib.runner.vmrun.main with this module's series (the serial one when one at a time is all
    that fits, or asked)."""
    plan = size_guests(args, list(args.kernels))
    if plan.note:
        print(f"# -j: {plan.note}", flush=True)
    return vmrun.main(args, root, series=run_series if plan.jobs > 1 else None)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_series(args: argparse.Namespace, root: Path, images: list[str]) -> int:
    """--kernels with -j N > 1: the series' kernels N at a time (or a k-ary first-bad search);
    then the same table, matrix and exit code as the serial series."""
    base = folders.run_dir(args.results, root, "kernels")
    series = Series(args, root, images, base)
    nproc, avail = machine()
    series.say(f"# -j {args.jobs}: up to {args.jobs} kernels at once, each guest --memory {args.memory} "
               f"--cpus {args.cpus} (nproc {nproc}, MemAvailable {avail} MiB); results: {base}")
    old = signal.signal(signal.SIGTERM, _sigterm)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int == signal.SIG_IGN:  # started in the background: the children would inherit it ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (a handler is reset by exec, SIG_IGN is not)
    try:
        first_bad: int | None = None
        note = ""
        if args.find_first_bad:
            round_no = 0

            def test_batch(indices: list[int]) -> dict[int, int]:
                nonlocal round_no
                round_no += 1
                series.say(f"# find-first-bad round {round_no}: kernels "
                           + ", ".join(f"{i + 1} ({series.label(i)})" for i in indices))
                series.batch(indices)
                return {i: series.codes[i] for i in indices}

            first_bad, note, rounds = find_first_bad_kary(len(images), test_batch, args.jobs)
            note = f"{note}; {rounds} round(s) of up to {args.jobs}"
        else:
            series.batch(list(range(len(images))))
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    return vmrun.finish_series(args, base, images, series.runs, first_bad, note)
