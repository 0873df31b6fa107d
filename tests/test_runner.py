"""run_suite.py end to end on synthetic case trees (tests/data/runner/*, via KMM_CASES).

Exit codes (default and --bisect), bad command lines, isolation (timeout, signal deaths, the
run goes on), the kernel log watch, settings restored after an exception and through the
journal after SIGKILL, and an interrupted run's partial but valid report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from junitparser import JUnitXml

from lib import report, system

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
    tap = {n: v for n, v, _ in report.parse_tap((tmp_path / "results.tap").read_text())}
    junit = {}
    for suite in JUnitXml.fromfile(str(tmp_path / "junit.xml")):
        assert suite.name == "kmm.demo"
        for c in suite:
            junit[c.name] = "fail" if not (c.is_passed or c.is_skipped) else ("skip" if c.is_skipped else "pass")
    s = verdicts(tmp_path)
    assert tap == s
    assert junit == {n: {"xfail": "skip"}.get(v, v) for n, v in s.items()}
    props = summary(tmp_path)["kernel"]
    assert props["kernel.release"] == os.uname().release
    assert "uffd.features" in props


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
    hook, see tests/data/runner/swallowed): lib.interrupt raises it again at the next case."""
    p = run("swallowed", results=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "# PARTIAL RUN: interrupted (SIGTERM)" in p.stdout
    s = summary(tmp_path)
    assert s["partial"] is True and 3 <= len(s["cases"]) < 5, [c["name"] for c in s["cases"]]
    assert "Traceback" not in p.stdout + p.stderr


def test_interrupt_check_raises_a_swallowed_signal_again(monkeypatch):
    from lib import interrupt

    monkeypatch.setattr(interrupt, "reason", None)
    interrupt.check()  # no signal yet: nothing to raise
    try:
        interrupt.on_signal(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pass  # what a finalizer or fork hook does with it
    with pytest.raises(KeyboardInterrupt) as e:
        interrupt.check()
    assert e.value.kmm_reason == "interrupted (SIGTERM)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_a_valid_partial_report(tmp_path, sig):
    e = dict(os.environ, KMM_CASES=str(DATA / "slow"), KMM_STATE_DIR=str(PRIVATE_STATE))
    proc = subprocess.Popen([*RUN, f"--results={tmp_path}"], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("ok 2 "):
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=60)
    text = "".join(seen) + out
    assert proc.returncode == 1
    assert "# PARTIAL RUN: interrupted (SIG" in text
    s = summary(tmp_path)
    assert s["partial"] is True and 2 <= len(s["cases"]) < 20
    assert s["kernel"]["run.partial"].startswith("interrupted")
    xml = JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    assert sum(1 for suite in xml for _ in suite) == len(s["cases"])
    assert "Traceback" not in text
