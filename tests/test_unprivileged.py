"""The suite run as an unprivileged user: what needs privilege skips with that reason, what an
unprivileged user may do (UFFD_USER_MODE_ONLY faults) runs and passes.

Runs run_suite.py as nobody (setpriv, all capabilities dropped) on a representative selection:
cases whose faults are all taken in user mode must *pass* there (lib.kernel.uffd.open_for opens them
user-mode-only), cases that need a kernel-mode fault (read(2)/write(2) into registered memory,
MADV_POPULATE_*) or a privileged feature (UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE) or root
must skip with that precise reason, and nothing may fail or error.  ``judge`` holds those rules;
its negative controls below feed it the summaries a broken probe would produce.

The interpreter must be readable by nobody: scripts/bootstrap.sh builds .venv from
/usr/bin/python3 for that reason; $KMM_UNPRIV_PYTHON names another one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
KERNEL_FAULTS = "needs kernel-mode uffd faults"

# case name -> (verdict, a substring its message must hold); one or more per area
EXPECT: dict[str, tuple[str, str]] = {
    "UFFDIO_API (with syscall)": ("pass", ""),
    "missing read fault served by UFFDIO_COPY on anon (scm_rights handler)": ("pass", ""),
    "missing write fault served by UFFDIO_COPY on anon (scm_rights handler)": ("pass", ""),
    "copy-eexist on anon": ("pass", ""),
    "move on anon": ("pass", ""),
    "user-mode-only kernel-mode read(2) on anon": ("pass", ""),
    "user-mode-only kernel-mode write(2) on shmem": ("pass", ""),
    "kernel-mode read(2) on anon": ("skip", KERNEL_FAULTS),
    "kernel-mode write(2) on shmem": ("skip", KERNEL_FAULTS),
    "TestMissing/standard 4k page, operation at start": ("skip", KERNEL_FAULTS),
    "events on anon": ("skip", "EVENT_FORK: UFFDIO_API: Operation not permitted (needs CAP_SYS_PTRACE)"),
    "MADV_DONTNEED sends REMOVE for the advised range on anon": ("pass", ""),
    "EAGAIN copy retried after reading the REMOVE on anon (thread handler)": ("pass", ""),
    "sync wp write blocks until unprotected on anon": ("pass", ""),
    "wp-async writes never reach the handler on anon": ("pass", ""),
    "wp-unpopulated on anon": ("pass", ""),
    "pagemap exclusive bit and PFNs across COW ... with base page": ("skip", "needs root: PFNs"),
}
SELECTION = [*EXPECT, "UFFDIO_API (with /dev/userfaultfd)"]


def judge(cases: dict[str, dict], dev_open_to_all: bool) -> list[str]:
    """What is wrong with an unprivileged run's cases (summary.json entries by name)."""
    bad = [f"{n}: not run" for n in EXPECT if n not in cases]
    for name, c in cases.items():
        verdict, msg = c["verdict"], c.get("message", "")
        if verdict not in ("pass", "skip", "xfail"):
            bad.append(f"{name}: {verdict} {msg}")
        elif verdict == "skip" and not msg:
            bad.append(f"{name}: skip without a reason")
        want = EXPECT.get(name)
        if want and (verdict != want[0] or want[1] not in msg):
            bad.append(f"{name}: {verdict} {msg!r}, expected {want[0]} {want[1]!r}")
        if "hugetlb" in name and verdict == "skip" and "needs root" not in msg:
            bad.append(f"{name}: hugetlb case skipped for another reason than root: {msg}")
    dev = cases.get("UFFDIO_API (with /dev/userfaultfd)")
    dev_skipped = dev is not None and dev["verdict"] == "skip" and "/dev/userfaultfd" in dev["message"]
    if dev is not None and not dev_open_to_all and not dev_skipped:
        bad.append(f"UFFDIO_API (with /dev/userfaultfd): {dev['verdict']} {dev['message']!r}, "
                   "but the device is closed to nobody")
    return bad


def interpreter() -> str:
    py = os.environ.get("KMM_UNPRIV_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to become nobody")
    probe = subprocess.run([*NOBODY, py, "-c", "import pytest, pytest_timeout"], capture_output=True, text=True,
                           cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{py} is not usable by nobody ({probe.stderr.strip().splitlines()[-1:]}); "
                    "scripts/bootstrap.sh builds .venv from /usr/bin/python3")
    return py


def dev_open_to_all() -> bool:
    return os.stat("/dev/userfaultfd").st_mode & 0o006 == 0o006


@pytest.fixture
def shared_tmp():
    d = Path(tempfile.mkdtemp(prefix="kmm-unpriv-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unprivileged_probe():
    """As nobody (vm.unprivileged_userfaultfd=0 assumed, checked): only the user-mode-only open
    works, open_for picks it by itself, and EVENT_FORK is the one feature refused."""
    py = interpreter()
    if Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() != "0" or dev_open_to_all():
        pytest.skip("nobody may open a uffd that takes kernel-mode faults here")
    code = ("import json; from lib.kernel import uffd, abi; a = uffd.probe(); u = uffd.open_for(0); "
            "print(json.dumps([a.syscall, a.syscall_user_only, a.dev, a.kernel_faults, a.auto_user_mode_only, "
            "sorted(abi.Feature(b).name for b in a.refused), a.features]))")
    p = subprocess.run([*NOBODY, py, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    syscall, user_only, dev, kernel_faults, auto, refused, features = json.loads(p.stdout)
    assert (syscall, user_only, dev, kernel_faults, auto) == (False, True, False, False, True)
    assert refused == ["EVENT_FORK"]
    assert features, "UFFDIO_API on the user-mode-only uffd reported no features"


def test_unprivileged_run(shared_tmp):
    py = interpreter()
    out = shared_tmp / "r"
    p = subprocess.run([*NOBODY, py, str(ROOT / "run_suite.py"), f"--results={out}", *SELECTION],
                       capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert "Traceback" not in p.stdout + p.stderr
    assert p.returncode == 0, p.stdout + p.stderr
    cases = {c["name"]: c for c in json.loads((out / "summary.json").read_text())["cases"]}
    assert judge(cases, dev_open_to_all()) == []


# negative controls: the summaries a wrong probe or an undeclared need would produce
def _good() -> dict[str, dict]:
    return {n: {"verdict": v, "message": m or ""} for n, (v, m) in EXPECT.items()}


def test_judge_accepts_the_expected_run():
    assert judge(_good(), dev_open_to_all=True) == []


def test_judge_catches_probe_reporting_uffd_unavailable():
    cases = _good()
    for n, (v, _) in EXPECT.items():
        if v == "pass":
            cases[n] = {"verdict": "skip", "message": "userfaultfd unavailable (possible lack of privilege): ..."}
    bad = judge(cases, dev_open_to_all=True)
    assert any(b.startswith("copy-eexist on anon: skip") for b in bad), bad


def test_judge_catches_undeclared_kernel_fault():
    cases = _good()
    cases["kernel-mode read(2) on anon"] = {"verdict": "fail", "message": "read(2) length: EFAULT"}
    assert any(b.startswith("kernel-mode read(2) on anon: fail") for b in judge(cases, dev_open_to_all=True))


def test_judge_catches_kernel_fault_case_run_unprivileged():
    cases = _good()
    cases["TestMissing/standard 4k page, operation at start"] = {"verdict": "pass", "message": ""}
    assert judge(cases, dev_open_to_all=True)


def test_judge_catches_a_missing_case_and_a_reasonless_skip():
    cases = _good()
    del cases["move on anon"]
    cases["extra"] = {"verdict": "skip", "message": ""}
    assert sorted(judge(cases, dev_open_to_all=True)) == ["extra: skip without a reason", "move on anon: not run"]
