"""run_suite.py end to end on synthetic case trees (tests/data/runner/*, via KMM_CASES).

Exit codes (default and --bisect), bad command lines, isolation (timeout, signal deaths, the
run goes on), the kernel log watch, settings restored after an exception and through the
journal after SIGKILL, and an interrupted run's partial but valid report.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from junitparser import JUnitXml

from lib.kernel import system
from lib.runner import report
from tests import junit_schema

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "runner"
RUN = [sys.executable, str(ROOT / "run_suite.py")]
KNOB = "/sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


PRIVATE_STATE = Path(tempfile.mkdtemp(prefix="kmm-test-state-"))


def run(tree: str | None, *args: str, results: Path | None = None, timeout: float = 120,
        env: dict | None = None, shared_lock: bool = False) -> subprocess.CompletedProcess:
    """run_suite.py on a synthetic tree.  Runs that change no setting use a private run lock
    and journal, so they never wait for a real run on the machine; the settings tests share
    the machine's (they change a real knob)."""
    e = dict(os.environ)
    if not shared_lock:
        e["KMM_STATE_DIR"] = str(PRIVATE_STATE)
    if tree:
        e["KMM_CASES"] = str(DATA / tree)
    e.update(env or {})
    argv = [*RUN, *args] + ([f"--results={results}"] if results else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def summary(results: Path) -> dict:
    return json.loads((results / "summary.json").read_text())


def verdicts(results: Path) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in summary(results)["cases"]}


# -- exit codes -------------------------------------------------------------------------------

def test_mixed_run_reports_every_verdict(tmp_path):
    p = run("mixed", results=tmp_path)
    assert p.returncode == 1, p.stderr
    assert verdicts(tmp_path) == {
        "demo pass": "pass", "demo skip": "skip", "demo xfail": "xfail", "demo fail": "fail",
        "demo param one": "pass", "demo param two": "pass",
    }
    tap = p.stdout
    assert tap.startswith("TAP version 13\n1..6\n")
    assert "ok 2 demo skip # SKIP feature missing: DEMO" in tap
    assert "ok 3 demo xfail # XFAIL upstream documents this limitation" in tap
    assert "not ok 4 demo fail" in tap
    assert "# Totals: pass:3 fail:1 xfail:1 xpass:0 skip:1 error:0" in tap
    assert (tmp_path / "results.tap").read_text() in tap  # the file holds the same TAP
    assert "Traceback" not in p.stdout + p.stderr


def test_tap_junit_summary_agree(tmp_path):
    run("mixed", results=tmp_path)
    assert junit_schema.check_file(str(tmp_path / "junit.xml")) == []
    tap = {n: v for n, v, _ in report.parse_tap((tmp_path / "results.tap").read_text())}
    junit = {}
    suites = list(JUnitXml.fromfile(str(tmp_path / "junit.xml")))
    assert [s.name for s in suites] == ["kmm.run", "kmm.demo"]
    assert list(suites[0]) == [], "a complete run: the run suite holds only the run's facts"
    for suite in suites[1:]:
        for c in suite:
            junit[c.name] = "fail" if not (c.is_passed or c.is_skipped) else ("skip" if c.is_skipped else "pass")
    s = verdicts(tmp_path)
    assert tap == s
    assert junit == {n: {"xfail": "skip"}.get(v, v) for n, v in s.items()}
    props = summary(tmp_path)["kernel"]
    assert props["kernel.release"] == os.uname().release
    assert "uffd.features" in props
    facts = summary(tmp_path)["run"]
    assert facts["command"] == f"run_suite.py --results={tmp_path}"
    assert facts["option.timeout"] == "60" and facts["planned"] == "6"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert facts["commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    assert facts["describe"] != "" and facts["version"] != ""
    assert all(c["started"] for c in summary(tmp_path)["cases"]), "every case's start time"


@pytest.mark.parametrize("tree,plain,bisect", [("passing", 0, 0), ("mixed", 1, 1), ("allskip", 4, 125)])
def test_exit_codes(tmp_path, tree, plain, bisect):
    assert run(tree, results=tmp_path / "a").returncode == plain
    assert run(tree, "--bisect", results=tmp_path / "b").returncode == bisect


def test_harness_error(tmp_path):
    """A case module that cannot even be imported: a harness error, never a verdict on the kernel."""
    p = run("broken", "--bisect", results=tmp_path / "b")
    assert p.returncode == 125
    p = run("broken", results=tmp_path / "a")
    assert p.returncode == 1
    assert "Traceback" not in p.stdout + p.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["no_such_area_or_case"], "no case matches 'no_such_area_or_case'"),
    (["--timeout", "abc"], "not a number"),
    (["--repeat", "0"], "must be at least 1"),
])
def test_bad_command_line_exits_2_with_one_line(argv, needle):
    p = run("mixed", *argv)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_list_and_selection(tmp_path):
    p = run("mixed", "--list")
    assert p.returncode == 0
    assert p.stdout.split("\n")[:2] == ["demo pass", "demo skip"]
    p = run("mixed", "demo param*", results=tmp_path)
    assert p.returncode == 0
    assert set(verdicts(tmp_path)) == {"demo param one", "demo param two"}


def test_repeat_reports_each_verdict(tmp_path):
    p = run("passing", "--repeat", "3", results=tmp_path)
    assert p.returncode == 0
    cases = {c["name"]: c for c in summary(tmp_path)["cases"]}
    assert cases["demo pass"]["repeats"] == ["pass", "pass", "pass"]


# -- isolation --------------------------------------------------------------------------------

@root_only
def test_isolation_timeout_and_signals(tmp_path):
    t0 = time.monotonic()
    p = run("isolation", results=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert p.returncode == 1
    cases = {c["name"]: c for c in summary(tmp_path)["cases"]}
    blocked = cases["blocked on an unserved userfault"]
    assert blocked["verdict"] == "fail" and blocked["timeout"]
    assert "timeout after 2s" in blocked["message"]
    assert "registered MISSING, no handler" in blocked["message"]
    assert "handle_userfault" in blocked["message"] + blocked["details"]
    assert cases["dies of SIGBUS"]["verdict"] == "fail"
    assert "killed by SIGBUS" in cases["dies of SIGBUS"]["message"]
    assert "killed by SIGSEGV" in cases["killed by SIGSEGV"]["message"]
    assert cases["still runs after them"]["verdict"] == "pass"
    assert "not ok 1 blocked on an unserved userfault # TIMEOUT" in p.stdout
    # nothing of the run is left: no process in a case's group
    leftovers = subprocess.run(["pgrep", "-f", "tests/data/runner/isolation"], capture_output=True, text=True)
    assert leftovers.stdout == ""


@root_only
def test_kernel_log_splat_fails_a_passing_case(tmp_path):
    p = run("kmsg", results=tmp_path, shared_lock=True)  # its splat must not land in another run's case
    assert p.returncode == 1
    c = summary(tmp_path)["cases"][0]
    assert c["verdict"] == "fail"
    assert "kernel log splat" in c["message"] and "synthetic splat" in c["kmsg"]


# -- settings ---------------------------------------------------------------------------------

@root_only
def test_settings_restored_after_an_exception(tmp_path):
    before = system.Settings.read(KNOB)
    p = run("settings", "changes a knob then fails", results=tmp_path, shared_lock=True)
    assert p.returncode == 1
    assert verdicts(tmp_path)["changes a knob then fails"] == "fail"
    assert "boom after changing a knob" in summary(tmp_path)["cases"][0]["message"]
    assert system.Settings.read(KNOB) == before


@root_only
def test_settings_repaired_by_journal_after_sigkill(tmp_path):
    before = system.Settings.read(KNOB)
    ready = Path("/tmp/kmm-settings-hang-ready")
    ready.unlink(missing_ok=True)
    e = dict(os.environ, KMM_CASES=str(DATA / "settings"))
    proc = subprocess.Popen([*RUN, "changes a knob then hangs", f"--results={tmp_path / 'a'}"], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "the hanging case never started"
            assert proc.poll() is None, "the run ended early"
            time.sleep(0.05)
        assert system.Settings.read(KNOB) == "54321"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert system.Settings.read(KNOB) == "54321", "SIGKILL leaves the knob changed"
    # the case process dies with its parent (PR_SET_PDEATHSIG): nothing outlives the run
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "changes a knob then hangs"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the case process outlived the killed run"
        time.sleep(0.05)
    p = run("passing", results=tmp_path / "b", shared_lock=True)  # the next run repairs from the journal
    assert p.returncode == 0
    assert system.Settings.read(KNOB) == before
    assert not Path(system.STATE_DIR, "journal.json").exists()


# -- interrupted runs -------------------------------------------------------------------------

def test_a_swallowed_interrupt_still_ends_the_run(tmp_path):
    """The signal lands where Python swallows the handler's KeyboardInterrupt (an os.fork()
    hook, see tests/data/runner/swallowed): lib.runner.interrupt raises it again right after that fork
    (before the forked case runs) or, at the latest, at the next case boundary."""
    p = run("swallowed", results=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "# PARTIAL RUN: interrupted (SIGTERM)" in p.stdout
    s = summary(tmp_path)
    assert s["partial"] is True and 2 <= len(s["cases"]) < 5, [c["name"] for c in s["cases"]]
    assert "Traceback" not in p.stdout + p.stderr


def test_interrupt_check_raises_a_swallowed_signal_again(monkeypatch):
    from lib.runner import interrupt

    monkeypatch.setattr(interrupt, "reason", None)
    interrupt.check()  # no signal yet: nothing to raise
    try:
        interrupt.on_signal(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pass  # what a finalizer or fork hook does with it
    with pytest.raises(KeyboardInterrupt) as e:
        interrupt.check()
    assert e.value.kmm_reason == "interrupted (SIGTERM)"


def _slow_run(tmp_path: Path, sig: int, after: str) -> tuple[subprocess.Popen, str]:
    """The slow tree, sent ``sig`` once a stdout line starts with ``after``."""
    e = dict(os.environ, KMM_CASES=str(DATA / "slow"), KMM_STATE_DIR=str(PRIVATE_STATE))
    proc = subprocess.Popen([*RUN, f"--results={tmp_path}"], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(after):
            proc.send_signal(sig)
            break
    if sig == signal.SIGKILL:
        proc.wait(30)
        return proc, "".join(seen)
    out, _ = proc.communicate(timeout=60)
    return proc, "".join(seen) + out


def _junit_cases(path: Path) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in ET.parse(path).getroot().iter("testcase")}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_a_valid_partial_report(tmp_path, sig):
    proc, text = _slow_run(tmp_path, sig, "ok 2 ")
    assert proc.returncode == 1
    assert "# PARTIAL RUN: interrupted (SIG" in text
    s = summary(tmp_path)
    assert s["partial"] is True and 2 <= len(s["cases"]) < 20
    assert s["kernel"]["run.partial"].startswith("interrupted")
    assert s["exit_code"] == 1
    assert len(s["planned"]) == 20 and len(s["not_run"]) == 20 - len(s["cases"])
    assert junit_schema.check_file(str(tmp_path / "junit.xml")) == []
    cases = _junit_cases(tmp_path / "junit.xml")
    assert len(cases) == 20 + 1, "every planned case, and the run's own error"
    not_run = [n for n, c in cases.items() if c.find("skipped") is not None]
    assert sorted(not_run) == sorted(s["not_run"])
    assert all(cases[n].find("skipped").get("message").startswith("not run: interrupted (SIG") for n in not_run)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("errors") == "1" and "run interrupted (SIG" in cases["run completed"].find("error").get("message")
    assert "Traceback" not in text


def test_interrupted_before_the_first_result(tmp_path):
    proc, text = _slow_run(tmp_path, signal.SIGINT, "# [RUN] slow case 0")
    assert proc.returncode == 1
    assert "# PARTIAL RUN: interrupted (SIGINT)" in text
    s = summary(tmp_path)
    assert s["partial"] is True and s["cases"] == [] and len(s["not_run"]) == 20
    assert junit_schema.check_file(str(tmp_path / "junit.xml")) == []
    cases = _junit_cases(tmp_path / "junit.xml")
    assert len(cases) == 21 and cases["run completed"].find("error") is not None
    assert (tmp_path / "results.tap").read_text().count("# PARTIAL RUN") == 1


def test_a_killed_run_never_claims_success(tmp_path):
    """SIGKILL: nothing can be written at the end, so what was written while running says so."""
    _slow_run(tmp_path, signal.SIGKILL, "ok 2 ")
    s = summary(tmp_path)
    assert s["exit_code"] is None and s["partial"] is True and s["partial_reason"] == "running"
    assert junit_schema.check_file(str(tmp_path / "junit.xml")) == []
    assert _junit_cases(tmp_path / "junit.xml")["run completed"].find("error") is not None


# -- results folders --------------------------------------------------------------------------

def test_run_folders_are_unique_within_a_second(tmp_path):
    from lib.runner import results

    made = [results.new_run_dir(tmp_path, "6.18 test", now=1e9) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert [p.name for p in made] == ["20010909T014640Z-6.18_test", "20010909T014640Z-6.18_test.1",
                                      "20010909T014640Z-6.18_test.2"]
    results.point_latest(made[1])
    assert os.readlink(tmp_path / "latest") == made[1].name
    results.point_latest(made[2])
    assert os.readlink(tmp_path / "latest") == made[2].name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_run_folder_given_and_chosen(tmp_path, monkeypatch):
    """lib.runner.results decides a run's folder and `latest`: a --results folder is used as it is
    (removed after a usage error only when this run created it) and `latest` never follows it; a
    folder of the run's own under the base is, once the run wrote its reports."""
    from lib.runner import results

    monkeypatch.setenv("KMM_RESULTS_BASE", str(tmp_path / "base"))
    given = results.open_run(str(tmp_path / "given"), ROOT, "6.18")
    assert given.created and not given.latest and given.path == tmp_path / "given"
    given.finish(reported=True)
    assert not (tmp_path / "latest").exists()
    given.discard()
    assert not given.path.exists()
    (tmp_path / "kept").mkdir()
    kept = results.open_run(str(tmp_path / "kept"), ROOT, "6.18")
    assert not kept.created
    kept.discard()
    assert kept.path.is_dir()  # never deletes a folder it did not make
    own = results.open_run(None, ROOT, "6.18")
    assert own.created and own.latest and own.path.parent == tmp_path / "base"
    own.finish(reported=False)
    assert not (tmp_path / "base" / "latest").exists()  # no reports: `latest` stays
    own.finish(reported=True)
    assert os.readlink(tmp_path / "base" / "latest") == own.path.name
    assert results.run_dir(None, ROOT, "vm-x").parent == tmp_path / "base"  # vmrun's folders too


@root_only
def test_two_runs_at_once_get_their_own_folders(tmp_path):
    """Two runs started together: one waits for the run lock; each has its own complete report."""
    env = dict(os.environ, KMM_CASES=str(DATA / "slow"), KMM_STATE_DIR=str(tmp_path / "state"),
               KMM_RESULTS_BASE=str(tmp_path / "results"))
    procs = [subprocess.Popen([*RUN, "slow case [12]"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = sorted(p for p in (tmp_path / "results").iterdir() if p.name != "latest")
    assert len(folders) == 2, folders
    for f in folders:
        tap = (f / "results.tap").read_text()
        assert tap.count("TAP version 13") == 1 and tap.count("ok 1 ") == 1
        assert summary(f)["exit_code"] == 0 and len(summary(f)["cases"]) == 2
    assert any("waiting up to" in err for _, err in outs), "one of them waited for the lock"
    assert os.readlink(tmp_path / "results" / "latest") in {f.name for f in folders}


@root_only
def test_giving_up_on_the_lock(tmp_path):
    """Nothing on the TAP stream before the lock: the run that gives up prints no TAP header,
    says why in one line on stderr, and removes only its own folder."""
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        base = tmp_path / "results"
        p = run("passing", env={"KMM_STATE_DIR": str(state), "KMM_LOCK_WAIT": "0.5", "KMM_RESULTS_BASE": str(base)})
        mine = tmp_path / "given"
        mine.mkdir()
        (mine / "keep").write_text("x")
        q = run("passing", results=mine, env={"KMM_STATE_DIR": str(state), "KMM_LOCK_WAIT": "0.2"})
    finally:
        os.close(fd)
    for r in (p, q):
        assert r.returncode == 2
        assert r.stdout == "", "no TAP before the lock is held"
        assert "still holds" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
    assert list(base.iterdir()) == [], "its own folder is removed"
    assert (mine / "keep").exists() and not (mine / "results.tap").exists(), "a given folder is kept"


@root_only
def test_interrupted_while_waiting_for_the_lock(tmp_path):
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    base = tmp_path / "results"
    e = dict(os.environ, KMM_CASES=str(DATA / "passing"), KMM_STATE_DIR=str(state), KMM_LOCK_WAIT="60",
             KMM_RESULTS_BASE=str(base))
    try:
        proc = subprocess.Popen(RUN, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "waiting up to 60s for another run" in line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and out == ""
    assert err.strip().splitlines() == ["run_suite.py: interrupted before the run started (no case ran, no report)"]
    assert list(base.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 kB tmpfs of our own (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["chattr", "-R", "-i", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["read-only mount", "immutable", "full"])
def test_unwritable_results_folder_is_found_before_the_first_case(small_tmpfs, how):
    target = small_tmpfs / "res"
    target.mkdir()
    if how == "read-only mount":
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    elif how == "immutable":
        subprocess.run(["chattr", "+i", str(target)], check=True)
    else:
        _fill(small_tmpfs)
    p = run("passing", results=target)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and "Traceback" not in p.stderr, p.stderr


@root_only
def test_a_disk_that_fills_mid_run(small_tmpfs):
    """The second case fills the results folder's filesystem: the TAP on stdout is complete, the
    run ends non-zero with a clear line, and no report there claims success."""
    res = small_tmpfs / "res"
    p = run("fill", results=res, env={"KMM_FILL_DIR": str(small_tmpfs)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "could not be written" in p.stderr and "Traceback" not in p.stdout + p.stderr
    assert "could not be written" in p.stdout
    assert [v for _, v, _ in report.parse_tap(p.stdout)][:2] == ["pass", "pass"]
    s = summary(res)
    assert s["exit_code"] != 0 and s["partial"] is True, s["exit_code"]
    assert not [f for f in os.listdir(res) if ".tmp" in f], "no half-written temporary file is left"


# -- the run's output and processes ---------------------------------------------------------

def test_stdout_closed_early_gives_no_traceback(tmp_path):
    e = dict(os.environ, KMM_CASES=str(DATA / "mixed"), KMM_STATE_DIR=str(PRIVATE_STATE))
    for args in (["--list"], [f"--results={tmp_path}"]):
        p = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *RUN, *args], env=e,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert p.stdout.count("\n") == 1
        assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert summary(tmp_path)["exit_code"] == 1, "the run went on to its end with stdout gone"


@root_only
def test_timeout_names_the_function_and_line(tmp_path):
    p = run("nostep", results=tmp_path)
    cases = {c["name"]: c for c in summary(tmp_path)["cases"]}
    src = (DATA / "nostep" / "demo" / "test_nostep.py").read_text().splitlines()
    waits = src.index(next(ln for ln in src if "# WAITS HERE" in ln)) + 1
    faults = src.index(next(ln for ln in src if "# FAULTS HERE" in ln)) + 1
    msg = cases["waits without naming a step"]["message"]
    assert msg == f"timeout after 1s: in wait_forever (tests/data/runner/nostep/demo/test_nostep.py:{waits})"
    msg = cases["faults without naming a step"]["message"]
    assert f"called from test_faults (tests/data/runner/nostep/demo/test_nostep.py:{faults})" in msg
    assert "blocked in handle_userfault" in msg
    assert "Python stacks at the deadline" in cases["faults without naming a step"]["details"]
    assert p.returncode == 1


def test_where_in_stack_reads_faulthandler_output():
    from lib.runner import isolation

    dump = (
        "main 0x00007f0000000001\n"
        "Thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n'
        "\n"
        "Current thread 0x00007f0000000001 (most recent call first):\n"
        f'  File "{ROOT}/lib/kernel/libc.py", line 168 in read\n'
        f'  File "{ROOT}/cases/x/test_y.py", line 42 in test_z\n'
        f'  File "{ROOT}/lib/runner/isolation.py", line 482 in run_isolated\n'
        f'  File "{ROOT}/.venv/lib/python3.11/site-packages/_pytest/runner.py", line 1 in f\n'
    )
    assert isolation.where_in_stack(dump) == "read (lib/kernel/libc.py:168), called from test_z (cases/x/test_y.py:42)"
    trimmed = isolation.trim_stack(dump)
    assert "_pytest" not in trimmed and "main 0x" not in trimmed and 'File "cases/x/test_y.py"' in trimmed
    assert isolation.where_in_stack("") == ""


@root_only
def test_case_process_group_dies_with_a_killed_runner(tmp_path):
    """SIGKILL the runner while a case's grandchild waits: the whole case process group goes."""
    pidfile = tmp_path / "grandchild.pid"
    e = dict(os.environ, KMM_CASES=str(DATA / "pgroup"), KMM_STATE_DIR=str(PRIVATE_STATE),
             KMM_PGROUP_PIDFILE=str(pidfile))
    proc = subprocess.Popen([*RUN, f"--results={tmp_path / 'r'}"], env=e, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the grandchild never started"
            time.sleep(0.02)
        pid = int(pidfile.read_text())
        t0 = time.monotonic()
        proc.kill()
        proc.wait(30)
        while Path(f"/proc/{pid}").exists() and child_state(pid) != "Z":
            assert time.monotonic() - t0 < 5, "the case's grandchild outlived the killed runner by 5 s"
            time.sleep(0.01)
        print(f"grandchild gone {time.monotonic() - t0:.3f}s after the runner's SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def child_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]
