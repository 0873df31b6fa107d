"""run_suite.py --kernels -j N (lib/runner/parallel.py): several kernels at once, same verdicts.

The guests are stand-ins for vng (as in tests/test_vmrun.py): they print a kernel console and
run the guest command on this machine, deciding good or bad from the image's name.  A FIFO
between two stand-ins proves that -j N really boots kernels at once and that they finish in
another order than the list's, without any sleep: the first kernel's guest waits (with a
deadline) for the third's to end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lib.runner import parallel, vmrun
from tests.test_vmrun import BOOT, DATA, PRIVATE_STATE, ROOT, RUNS, fake, root_only

GOOD, BAD, SKIP = 0, 1, 125

# The stand-in guest: a `bad` image runs the `mixed` tree (a failing case), others `passing`.
# It records its own --memory/--cpus in its results folder.  With $KMM_FAKE_FIFO set, the
# `1-` image's guest waits (deadline $KMM_FAKE_DEADLINE s) for a line the `3-` image's guest writes on that FIFO
# once its own guest command has ended.
GUEST = BOOT + r"""for a; do
  [ "$p2" = --rwdir ] && shared=$a; [ "$p2" = --memory ] && mem=$a; [ "$p2" = --cpus ] && cpus=$a; p2=$a
done
echo "$mem $cpus" > "$shared/fake-vng-size"
case "${image##*/}" in *bad*) export KMM_CASES=""" + str(DATA / "mixed") + r""";; esac
if [ -n "$KMM_FAKE_FIFO" ]; then
  case "$image" in
    *vmlinuz-1-*) if timeout "$KMM_FAKE_DEADLINE" sh -c 'read line < "$KMM_FAKE_FIFO"'
                  then echo met > "$shared/fake-barrier"; else echo missed > "$shared/fake-barrier"; fi;;
    *vmlinuz-3-*) eval "$last"; rc=$?; timeout "$KMM_FAKE_DEADLINE" sh -c 'echo go > "$KMM_FAKE_FIFO"'; exit $rc;;
  esac
fi
eval "$last"
exit $?
"""


def images(tmp_path: Path, names: list[str]) -> list[str]:
    out = []
    for name in names:
        p = tmp_path / f"vmlinuz-{name}"
        p.write_bytes(b"x")
        out.append(str(p))
    return out


def run(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    e = dict(env, KMM_CASES=str(DATA / "passing"), KMM_STATE_DIR=PRIVATE_STATE)
    return subprocess.run([sys.executable, str(ROOT / "run_suite.py"), *args], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=timeout)


def verdicts(series: Path) -> dict[str, dict[str, str]]:
    """Each per-kernel folder's case verdicts (folder name -> case -> verdict)."""
    out = {}
    for sub in sorted(p for p in series.iterdir() if p.is_dir()):
        s = json.loads((sub / "summary.json").read_text())
        out[sub.name] = {c["name"]: c["verdict"] for c in s["cases"]} | {"[vm]": s["vm"]["verdict"]}
    return out


# -- the split rule ------------------------------------------------------------------------------


def test_split_defaults_on_a_two_cpu_machine():
    """-j 1 keeps the serial defaults (2G, 2 CPUs); -j 2 halves the CPUs; memory stays 2G."""
    assert parallel.split(1, 2, 24000) == parallel.Plan(1, "2048M", 2)
    assert parallel.split(2, 2, 24000) == parallel.Plan(2, "2048M", 1)
    assert parallel.split(3, 8, 24000) == parallel.Plan(3, "2048M", 2)


def test_split_never_oversubscribes_memory():
    for avail in (1500, 2500, 3000, 4000, 6000, 9000, 24000):
        for jobs in range(1, 9):
            plan = parallel.split(jobs, 2, avail)
            per = parallel.parse_mib(plan.memory)
            assert per is not None and per % 64 == 0
            if plan.jobs > 1:  # one guest always runs (as the serial series does)
                assert plan.jobs * (per + parallel.QEMU_OVERHEAD_MIB) <= avail - parallel.HOST_RESERVE_MIB
                assert per >= parallel.MIN_GUEST_MIB
            assert (plan.jobs < jobs) == bool(plan.note)
    plan = parallel.split(4, 2, 3000)
    assert plan.jobs == 1 and "not 4" in plan.note


def test_explicit_memory_and_cpus_win():
    plan = parallel.split(2, 2, 24000, memory="8G", cpus=2)
    assert (plan.jobs, plan.memory, plan.cpus) == (2, "8G", 2)
    plan = parallel.split(3, 2, 12000, memory="8G")  # two 8G guests do not fit in 11000 MiB
    assert (plan.jobs, plan.memory) == (1, "8G") and "--memory 8G" in plan.note
    assert parallel.parse_mib("1536") == 1536 and parallel.parse_mib("2G") == 2048
    assert parallel.parse_mib("512M") == 512 and parallel.parse_mib("lots") is None


def test_split_negative_control():
    """The oversubscription oracle fails for a plan that gives every slot 2G regardless."""
    plan = parallel.Plan(4, "2048M", 1)
    per = parallel.parse_mib(plan.memory)
    assert per is not None
    assert not plan.jobs * (per + parallel.QEMU_OVERHEAD_MIB) <= 6000 - parallel.HOST_RESERVE_MIB


# -- k-ary search --------------------------------------------------------------------------------


def binary(verdicts_: list[int]) -> tuple[int | None, int]:
    calls: list[int] = []
    got, _ = vmrun.find_first_bad(len(verdicts_), lambda i: calls.append(i) or verdicts_[i])
    return got, len(calls)  # one kernel per round


def kary(verdicts_: list[int], width: int) -> tuple[int | None, int, list[list[int]]]:
    batches: list[list[int]] = []

    def batch(indices: list[int]) -> dict[int, int]:
        batches.append(indices)
        return {i: verdicts_[i] for i in indices}

    got, _, rounds = parallel.find_first_bad_kary(len(verdicts_), batch, width)
    return got, rounds, batches


def series_of(n: int, first_bad: int) -> list[int]:
    return [GOOD] * first_bad + [BAD] * (n - first_bad)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_kary_finds_the_binary_searchs_first_bad_in_fewer_rounds(width):
    for n in range(1, 41):
        worst_binary = worst_kary = 0
        for first_bad in range(n + 1):  # n: every kernel good
            v = series_of(n, first_bad)
            want, binary_rounds = binary(v)
            got, rounds, batches = kary(v, width)
            assert got == want == (first_bad if first_bad < n else None), (n, first_bad)
            assert all(len(b) <= width for b in batches)
            assert sum(map(len, batches)) <= n
            assert rounds <= binary_rounds, (n, first_bad, rounds, binary_rounds)
            worst_binary, worst_kary = max(worst_binary, binary_rounds), max(worst_kary, rounds)
        if n >= 4:
            assert worst_kary < worst_binary, (n, worst_kary, worst_binary)
    v = series_of(32, 19)
    assert (binary(v)[1], kary(v, width)[1]) == (6, {2: 4, 3: 3, 4: 3}[width])


def test_kary_width_one_is_no_faster_negative_control():
    """The "fewer rounds" oracle fails for a one-wide search: it is the binary search again."""
    v = series_of(32, 19)
    assert kary(v, 1)[0] == binary(v)[0] == 19
    assert not kary(v, 1)[1] < binary(v)[1]


@pytest.mark.parametrize("verdicts_,want", [
    ([0, 0, 1, 1], 2), ([1, 1, 1], 0), ([0, 0, 0], None), ([0, 125, 1, 1], 2), ([0, 125, 125, 1], 3),
    ([0, 1, 125, 1], 1), ([125, 125], None), ([0, 0, 1, 125], 2), ([0, 0, 0, 125], None),
])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_kary_steps_around_untestable_kernels(verdicts_, want, width):
    assert kary(verdicts_, width)[0] == want == binary(verdicts_)[0]


def test_kary_answers_are_consistent_with_skips():
    """Random series with untestable kernels: the answer is a bad kernel, and every kernel
    between it and the last good one before it could not be tested."""
    rng = random.Random(17)
    for _ in range(400):
        n = rng.randint(1, 30)
        v = [SKIP if rng.random() < 0.25 else x for x in series_of(n, rng.randint(0, n))]
        got, _, _ = kary(v, rng.randint(2, 4))
        testable = [i for i in range(n) if v[i] != SKIP]
        if not testable or v[testable[-1]] == GOOD:
            assert got is None, v
            continue
        assert got is not None and v[got] == BAD, (v, got)
        lo = max((i for i in range(got) if v[i] == GOOD), default=-1)
        assert all(v[i] == SKIP for i in range(lo + 1, got)), (v, got)


# -- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,needle", [(["-j", "0", "--kernels", "running"], "must be at least 1: '0'"),
                                         (["-j", "2"], "-j/--jobs needs --kernels"),
                                         (["--jobs=2", "--kernel", "running"], "-j/--jobs needs --kernels")])
def test_bad_jobs_is_one_line_exit_2(tmp_path, argv, needle):
    _, env = fake(tmp_path, RUNS)
    p = run(env, *argv)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and needle in p.stderr, p.stderr
    assert p.stdout == ""
    p = run(env, "--bisect", *argv)
    assert p.returncode == 255 and needle in p.stderr


# -- whole series with stand-in guests ------------------------------------------------------------


@root_only
def test_parallel_series_gives_the_serial_verdicts_and_folders(tmp_path):
    """-j 3 with four kernels (``running`` among them): the first kernel's guest cannot run
    its cases before the third's guest has ended, so they overlap and finish out of order; the verdicts, the
    per-kernel folders, table.txt, the exit code, matrix.html and the KCIDB file are those of
    the serial series."""
    _, env = fake(tmp_path, GUEST)
    kernels = [*images(tmp_path, ["1-good", "2-bad", "3-good"]), "running"]
    serial = run(env, "--kernels", *kernels, f"--results={tmp_path / 'serial'}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    par = run(dict(env, KMM_FAKE_FIFO=str(fifo), KMM_FAKE_DEADLINE="30"), "--kernels", *kernels, "-j", "3",
              f"--results={tmp_path / 'par'}", f"--kcidb={tmp_path / 'kcidb.json'}")
    assert serial.returncode == par.returncode == 1, par.stdout + par.stderr
    assert (tmp_path / "par" / "00-1-good" / "fake-barrier").read_text() == "met\n"  # they overlapped
    out = par.stdout
    assert out.index("[1-good] ok ") > out.index("[3-good] ok ")  # and finished out of order
    assert verdicts(tmp_path / "serial") == verdicts(tmp_path / "par")
    assert sorted(verdicts(tmp_path / "par")) == ["00-1-good", "01-2-bad", "02-3-good",
                                                  f"03-{os.uname().release}-(running)"]
    assert (tmp_path / "serial" / "table.txt").read_text() == (tmp_path / "par" / "table.txt").read_text()
    for sub in ("00-1-good", "01-2-bad", "02-3-good"):
        folder = tmp_path / "par" / sub
        s = json.loads((folder / "summary.json").read_text())
        assert s["kernel"]["vm.image"] == str(tmp_path / f"vmlinuz-{sub[3:]}")  # its own kernel's report
        assert (folder / "junit.xml").exists() and (folder / "console.log").exists()
        mem, cpus = (folder / "fake-vng-size").read_text().split()
        assert int(cpus) == min(2, max(1, len(os.sched_getaffinity(0)) // 3)) and mem.endswith("M")
        assert sorted(p.name for p in folder.iterdir() if p.name != "fake-barrier") == sorted(
            p.name for p in (tmp_path / "serial" / sub).iterdir())  # the serial series' layout
    host = json.loads((tmp_path / "par" / f"03-{os.uname().release}-(running)" / "summary.json").read_text())
    assert host["vm"]["image"] == "running" and host["vm"]["reason"] == "ran on the host"
    assert (tmp_path / "par" / "matrix.html").exists() and "# matrix: " in out
    kcidb = json.loads((tmp_path / "kcidb.json").read_text())
    assert len(kcidb["builds"]) == 4
    assert "Traceback" not in par.stdout + par.stderr
    # negative control: two kernels' reports in each other's folders fail both oracles
    a, b = tmp_path / "par" / "00-1-good" / "summary.json", tmp_path / "par" / "01-2-bad" / "summary.json"
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)
    assert verdicts(tmp_path / "serial") != verdicts(tmp_path / "par")
    assert json.loads(a.read_text())["kernel"]["vm.image"] != str(tmp_path / "vmlinuz-1-good")


@root_only
def test_fifo_barrier_negative_control(tmp_path):
    """One at a time, the first kernel's guest misses the third's: the overlap oracle can fail."""
    _, env = fake(tmp_path, GUEST)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kernels = images(tmp_path, ["1-good", "3-good"])
    p = run(dict(env, KMM_FAKE_FIFO=str(fifo), KMM_FAKE_DEADLINE="2"), "--kernels", *kernels, "-j", "1",
            f"--results={tmp_path / 'r'}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "r" / "00-1-good" / "fake-barrier").read_text() == "missed\n"


@root_only
def test_parallel_first_bad_matches_serial_in_fewer_rounds(tmp_path):
    _, env = fake(tmp_path, GUEST)
    kernels = images(tmp_path, [f"{10 + i}-{'bad' if i >= 6 else 'good'}" for i in range(8)])  # first bad: 6
    serial = run(env, "--kernels", *kernels, "--find-first-bad", f"--results={tmp_path / 's'}")
    par = run(env, "--kernels", *kernels, "--find-first-bad", "-j", "3", f"--results={tmp_path / 'p'}")
    assert serial.returncode == par.returncode == 1, par.stdout + par.stderr
    line = f"# first bad: {kernels[6]}"
    assert line in serial.stdout and line in par.stdout, par.stdout
    serial_rounds = serial.stdout.count("# ===== kernel")  # one kernel per round
    par_rounds = par.stdout.count("# find-first-bad round ")
    assert par_rounds < serial_rounds, (par_rounds, serial_rounds)
    assert f"{par_rounds} round(s) of up to 3" in par.stdout


@root_only
def test_harness_problem_stops_the_parallel_series(tmp_path):
    from tests.test_vmrun import QEMU_REFUSES

    image, env = fake(tmp_path, QEMU_REFUSES)
    p = run(env, "--kernels", image, image, "-j", "2", f"--results={tmp_path / 'r'}")
    assert p.returncode == 2 and "invalid kernel header" in p.stderr, p.stderr
    assert p.stderr.splitlines()[-1].startswith("run_suite.py: error: ")
    assert "Traceback" not in p.stdout + p.stderr


# (the console watchdog reports a guest line once the next one starts: hence the second line)
HANGS = BOOT + 'echo "KMM-GUEST-START"\necho "# [RUN] demo pass"\necho "# hanging"\nsleep 600 & wait\n'


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@root_only
@pytest.mark.parametrize("ignored", [False, True], ids=["", "started with SIGINT ignored"])
def test_interrupt_ends_every_guest_with_partial_reports(tmp_path, ignored):
    """SIGINT to a -j 2 series: both guests end (no stand-in vng left), each folder's report
    is marked partial, and the series exits 130 without a traceback; also when the series was
    started with SIGINT ignored (in the background of a script), which its children would
    otherwise inherit."""
    _, env = fake(tmp_path, HANGS)
    kernels = images(tmp_path, ["1-good", "2-good"])
    e = dict(env, KMM_CASES=str(DATA / "passing"), KMM_STATE_DIR=PRIVATE_STATE)
    p = subprocess.Popen([sys.executable, str(ROOT / "run_suite.py"), "--kernels", *kernels, "-j", "2",
                          f"--results={tmp_path / 'r'}"], env=e, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint if ignored else None)
    seen: list[str] = []
    assert p.stdout is not None
    anyway = threading.Timer(60, p.send_signal, (signal.SIGINT,))  # the deadline for both to start
    anyway.start()
    for line in p.stdout:  # until both guests are running their case
        seen.append(line)
        if sum("] # [RUN] demo pass" in x for x in seen) == 2:
            break
    anyway.cancel()
    assert sum("] # [RUN] demo pass" in x for x in seen) == 2, "".join(seen)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, "".join(seen) + out + err
    assert "Traceback" not in out + err
    for sub in ("00-1-good", "01-2-good"):
        s = json.loads((tmp_path / "r" / sub / "summary.json").read_text())
        assert s["partial"] is True, s
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "vng")], capture_output=True, text=True).stdout
    assert leftovers == ""
