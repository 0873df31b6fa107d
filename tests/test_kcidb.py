"""KCIDB submissions (lib/runner/kcidb.py) checked with kcidb-io's own validation of its latest schema.

A synthetic run holds every verdict kind (pass, fail, TIMEOUT, skip, xfail, xpass, error, a
planned case that did not run); real results folders (tests/data/kcidb: a guest run on Debian's
6.12 and an interrupted host run, both copied from this machine) go through the same path; and
the negative controls show that the validation used here rejects a broken submission.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kcidb_io
import pytest

from lib.runner import kcidb, report

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
RUN = [sys.executable, str(ROOT / "run_suite.py")]
PRIVATE_STATE = Path(tempfile.mkdtemp(prefix="kmm-test-kcidb-state-"))


def every_verdict() -> dict:
    """summary.json of an interrupted run with one case of each verdict kind."""
    t0 = 1_765_000_000.0
    cases = [
        report.CaseResult("missing", "zeropage on anon", "pass", duration=0.25, started=report.iso(t0)),
        report.CaseResult("cow", "Basic COW after fork() with THP (2048 kB)", "fail", "byte 0 changed",
                          details="at offset 0: 0xaa != 0x55", kmsg="[  1.0] BUG: Bad page map",
                          duration=1.5, started=report.iso(t0 + 1)),
        report.CaseResult("remove", "REMOVE race: madvise vs fault", "fail", "timeout after 5s: in wait_event",
                          timeout=True, duration=5.0, started=report.iso(t0 + 3)),
        report.CaseResult("missing", "zeropage on hugetlb (1048576 kB)", "skip", "no free 1 GiB hugetlb page",
                          started=report.iso(t0 + 9)),
        report.CaseResult("thp_collapse", "collapse of a swapped range", "xfail", "upstream documents it",
                          started=report.iso(t0 + 10)),
        report.CaseResult("thp_collapse", "collapse of a swapped range #2", "xpass", "the limitation is gone",
                          started=report.iso(t0 + 11)),
        report.CaseResult("wp_async", "WP_ASYNC on shmem", "error", "cannot test: khugepaged made no progress",
                          traceback="Traceback (most recent call last): ...", started=report.iso(t0 + 12)),
        # names that sanitise to the path of the first case, and to the suffixed path a collision gets
        report.CaseResult("missing", "zeropage on anon-2", "pass", started=report.iso(t0 + 13)),
        report.CaseResult("missing", "zeropage on anon!", "pass", started=report.iso(t0 + 14)),
    ]
    planned = [report.Planned(c.area, c.name, f"cases/{c.area}/test_x.py::t[{c.name}]") for c in cases]
    planned.append(report.Planned("missing", "bounce on shmem", "cases/missing/test_bounce.py::t[shmem]"))
    data = report.summary(cases, {"kernel.release": "6.18.44-test", "kernel.version": "#1 SMP PREEMPT_DYNAMIC",
                                  "machine": "x86_64"},
                          partial="interrupted (SIGINT)", started=t0, exit_code=1, planned=planned,
                          run={"hostname": "labhost", "version": "0.1.0", "describe": "abc1234",
                               "option.timeout": "60"})
    return json.loads(json.dumps(data))  # as read back from summary.json


def by_name(sub: dict) -> dict[str, dict]:
    return {t["misc"]["case_name"]: t for t in sub["tests"]}


def test_the_schema_is_kcidb_io_latest():
    sub = kcidb.submission(every_verdict())
    assert sub["version"] == {"major": kcidb_io.schema.LATEST.major, "minor": kcidb_io.schema.LATEST.minor}
    assert (sub["version"]["major"], sub["version"]["minor"]) >= (5, 3)


def test_every_verdict_kind_validates_and_maps_faithfully():
    sub = kcidb.submission(every_verdict(), origin="kmm_lab")
    kcidb_io.schema.LATEST.validate_exactly(sub)  # kcidb-io's own validation (jsonschema + formats)
    t = by_name(sub)
    status = {n: x["status"] for n, x in t.items()}
    assert status == {
        "zeropage on anon": "PASS", "Basic COW after fork() with THP (2048 kB)": "FAIL",
        "REMOVE race: madvise vs fault": "FAIL", "zeropage on hugetlb (1048576 kB)": "SKIP",
        "collapse of a swapped range": "PASS", "collapse of a swapped range #2": "FAIL",
        "WP_ASYNC on shmem": "ERROR", "zeropage on anon-2": "PASS", "zeropage on anon!": "PASS",
        "bounce on shmem": "MISS",
    }
    # XFAIL, XPASS and TIMEOUT told apart from plain PASS/FAIL
    assert t["collapse of a swapped range"]["misc"]["verdict"] == "xfail"
    assert t["collapse of a swapped range"]["comment"].startswith("collapse of a swapped range: XFAIL: upstream")
    assert "XPASS: the limitation is gone" in t["collapse of a swapped range #2"]["comment"]
    assert t["REMOVE race: madvise vs fault"]["comment"].endswith("TIMEOUT: timeout after 5s: in wait_event")
    assert t["REMOVE race: madvise vs fault"]["misc"]["timeout"] is True
    assert t["bounce on shmem"]["comment"] == "bounce on shmem: not run: interrupted (SIGINT)"
    assert "start_time" not in t["bounce on shmem"] and "duration" not in t["bounce on shmem"]
    # paths: kmm.<area>.<case>, sanitised, unique; the upstream name kept
    assert t["Basic COW after fork() with THP (2048 kB)"]["path"] == "kmm.cow.Basic_COW_after_fork_with_THP_2048_kB"
    assert t["zeropage on anon"]["path"] == "kmm.missing.zeropage_on_anon"
    assert t["zeropage on anon-2"]["path"] == "kmm.missing.zeropage_on_anon-2"
    assert t["zeropage on anon!"]["path"] == "kmm.missing.zeropage_on_anon-3"
    assert len({x["path"] for x in sub["tests"]}) == len({x["id"] for x in sub["tests"]}) == 10
    # the output of a case, timing, environment
    fail = t["Basic COW after fork() with THP (2048 kB)"]
    assert "byte 0 changed" in fail["log_excerpt"] and "BUG: Bad page map" in fail["log_excerpt"]
    assert fail["start_time"] == "2025-12-06T05:46:41.000Z" and fail["duration"] == 1.5
    assert "Traceback" in t["WP_ASYNC on shmem"]["log_excerpt"]
    assert fail["environment"]["misc"]["hostname"] == "labhost"
    assert fail["environment"]["misc"]["option.timeout"] == "60"
    assert all(x["origin"] == "kmm_lab" and x["id"].startswith("kmm_lab:") for x in sub["tests"])
    assert sub["builds"][0]["checkout_id"] == sub["checkouts"][0]["id"]
    assert all(x["build_id"] == sub["builds"][0]["id"] for x in sub["tests"])


def test_path_component_is_deterministic_and_valid():
    path_re = re.compile(kcidb_io.schema.LATEST.json["$defs"]["path"]["pattern"])
    for name in ("Basic COW after fork() with THP (2048 kB)", "zeropage on hugetlb-private (1048576 kB)",
                 "vmsplice() + unmap in child", "###", "ünïcode"):
        comp = kcidb.path_component(name)
        assert path_re.match(f"kmm.x.{comp}"), comp
        assert comp == kcidb.path_component(name)
    assert kcidb.path_component("###") == "_"


def test_a_long_kernel_log_is_cut_to_the_schema_limit():
    data = every_verdict()
    data["cases"][1]["kmsg"] = "x" * 100_000 + "\0"
    sub = kcidb.submission(data)
    kcidb.validate(sub)
    log = by_name(sub)["Basic COW after fork() with THP (2048 kB)"]["log_excerpt"]
    assert len(log) <= kcidb.LOG_EXCERPT_MAX and "[... cut ...]" in log and log.startswith("byte 0 changed")


def test_git_tree_facts_fill_the_checkout(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e")
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "v"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin",
                    "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git"], check=True)
    facts = kcidb.tree_facts(str(tmp_path))
    sub = kcidb.submission(every_verdict(), facts=facts)
    kcidb.validate(sub)
    co = sub["checkouts"][0]
    assert re.fullmatch("[0-9a-f]{40}", co["git_commit_hash"]) and co["id"] == f"kmm:git:{co['git_commit_hash']}"
    assert co["git_repository_url"].startswith("https://git.kernel.org/")
    with pytest.raises(kcidb.KcidbError):
        kcidb.tree_facts(str(tmp_path / "nothing"))


@pytest.mark.parametrize("folder", ["series", "series/00-6.12.118+deb12-amd64", "host-missing-interrupted"])
def test_real_results_folders_validate(folder):
    data = kcidb.convert(DATA / "kcidb" / folder)  # convert() validates; check again explicitly
    kcidb_io.schema.LATEST.validate_exactly(data)
    runs = kcidb.load_runs(DATA / "kcidb" / folder)
    expected = sum(len(r["cases"]) + len(r["not_run"]) for r in runs)
    assert len(data["tests"]) == expected
    for r in runs:
        for c in r["cases"]:
            assert c["name"] in {t["misc"]["case_name"] for t in data["tests"]}
    if folder == "host-missing-interrupted":
        assert sum(t["status"] == "MISS" for t in data["tests"]) == 172
    else:
        assert data["builds"][0]["misc"]["image"] == "/boot/vmlinuz-6.12.118+deb12-amd64"


# -- negative controls: the validation used above rejects a broken submission ------------------

def _broken(mutate) -> dict:
    sub = kcidb.submission(every_verdict())
    mutate(sub)
    return sub


@pytest.mark.parametrize("mutation", [
    "status XFAIL", "status lowercase", "path with a space", "path with empty component", "id without origin",
    "origin uppercase", "test without build_id", "log_excerpt too long", "start_time not a date", "NUL in comment",
    "wrong major version",
])
def test_a_broken_submission_is_rejected(mutation):
    def mutate(sub: dict) -> None:
        t = sub["tests"][0]
        if mutation == "status XFAIL":
            t["status"] = "XFAIL"
        elif mutation == "status lowercase":
            t["status"] = "pass"
        elif mutation == "path with a space":
            t["path"] = "kmm.missing.zeropage on anon"
        elif mutation == "path with empty component":
            t["path"] = "kmm..zeropage"
        elif mutation == "id without origin":
            t["id"] = "no-colon-here"
        elif mutation == "origin uppercase":
            t["origin"] = "KMM"
        elif mutation == "test without build_id":
            del t["build_id"]
        elif mutation == "log_excerpt too long":
            t["log_excerpt"] = "x" * (kcidb.LOG_EXCERPT_MAX + 1)
        elif mutation == "start_time not a date":
            t["start_time"] = "yesterday"
        elif mutation == "NUL in comment":
            t["comment"] = "a\0b"
        elif mutation == "wrong major version":
            sub["version"]["major"] = 4

    sub = _broken(mutate)
    with pytest.raises(jsonschema.exceptions.ValidationError):
        kcidb_io.schema.LATEST.validate_exactly(sub)
    with pytest.raises(jsonschema.exceptions.ValidationError):
        kcidb.validate(sub)


def test_the_unbroken_control_passes():
    kcidb.validate(_broken(lambda sub: None))


@pytest.mark.parametrize("origin", ["KMM", "my-lab", "", "a:b"])
def test_a_bad_origin_is_refused(origin):
    with pytest.raises(kcidb.KcidbError):
        kcidb.submission(every_verdict(), origin=origin)


# -- the command line ----------------------------------------------------------------------------

def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, KMM_STATE_DIR=str(PRIVATE_STATE), **(env or {}))
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def test_convert_a_results_folder(tmp_path):
    out = tmp_path / "k.json"
    p = cli("--kcidb", str(out), "--origin", "kmm_ci", "--from-results", str(DATA / "kcidb" / "series"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"# kcidb: {out} (schema v")
    data = json.loads(out.read_text())
    kcidb_io.schema.LATEST.validate_exactly(data)
    assert {t["origin"] for t in data["tests"]} == {"kmm_ci"}


@pytest.mark.parametrize("args, says", [
    (["--kcidb", "X", "--origin", "Bad-Origin", "--from-results", "."], "is not a KCIDB origin"),
    (["--origin", "kmm2"], "need --kcidb FILE"),
    (["--kcidb", "X", "--from-results", "/nonexistent/results"], "no such folder"),
    (["--kcidb", "X", "--from-results", "/proc/self"], "no summary.json"),
    (["--kcidb", "X", "--kernel", "/boot/vmlinuz-x"], "needs --results DIR"),
    (["--kcidb", "/nonexistent/dir/k.json", "--from-results", "tests/data/kcidb/series"], "no such folder"),
])
def test_bad_kcidb_arguments_exit_2_with_one_line(tmp_path, args, says):
    args = [str(tmp_path / "k.json") if a == "X" else a for a in args]
    p = cli(*args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "k.json").exists()


def test_a_run_writes_its_submission(tmp_path):
    out = tmp_path / "k.json"
    p = cli("--kcidb", str(out), f"--results={tmp_path / 'r'}", env={"KMM_CASES": str(DATA / "runner" / "mixed")})
    assert p.returncode == 1, p.stderr  # the tree has a failing case
    assert f"# kcidb: {out}" in p.stdout
    data = json.loads(out.read_text())
    kcidb.validate(data)
    status = {t["misc"]["case_name"]: (t["status"], t["misc"]["verdict"]) for t in data["tests"]}
    assert status == {"demo pass": ("PASS", "pass"), "demo skip": ("SKIP", "skip"), "demo xfail": ("PASS", "xfail"),
                      "demo fail": ("FAIL", "fail"), "demo param one": ("PASS", "pass"),
                      "demo param two": ("PASS", "pass")}


def test_an_interrupted_run_writes_its_submission_with_the_missing_cases(tmp_path):
    out = tmp_path / "k.json"
    e = dict(os.environ, KMM_CASES=str(DATA / "runner" / "slow"), KMM_STATE_DIR=str(PRIVATE_STATE))
    proc = subprocess.Popen([*RUN, "--kcidb", str(out), f"--results={tmp_path / 'r'}"], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ok 2 "):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"# kcidb: {out}" in rest
    data = json.loads(out.read_text())
    kcidb.validate(data)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    miss = [t for t in data["tests"] if t["status"] == "MISS"]
    assert len(miss) == len(summary["not_run"]) > 0
    assert len(data["tests"]) == 20
    assert all(t["comment"].endswith("not run: interrupted (SIGINT)") for t in miss)


def test_kcidb_io_is_pinned_in_requirements():
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^kcidb-io==\S+", reqs, re.M)


def test_a_guest_run_records_the_guest_it_ran_in():
    vm_run = kcidb.load_runs(DATA / "kcidb" / "series")[0]
    facts = kcidb.gather(vm_run, guest={"cpus": "2", "memory": "2G"})
    env = kcidb.submission(vm_run, facts=facts)["tests"][0]["environment"]
    assert "guest of /boot/vmlinuz-6.12.118+deb12-amd64, 2 CPUs, 2G" in env["comment"]
    assert env["misc"]["vm.verdict"] == "ok" and env["misc"]["host.cpus"] == "2"
    host_run = kcidb.load_runs(DATA / "kcidb" / "host-missing-interrupted")[0]
    assert "guest of" not in kcidb.submission(host_run, facts=kcidb.gather(host_run, guest={"cpus": "9"}))[
        "tests"][0]["environment"]["comment"]
