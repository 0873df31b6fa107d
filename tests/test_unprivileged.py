"""The suite run as an unprivileged user: what needs privilege skips with that reason, what an
unprivileged user may do (UFFD_USER_MODE_ONLY faults) runs and passes.

Runs run_suite.py as nobody (setpriv, all capabilities dropped).  The interpreter must be
readable by nobody: scripts/bootstrap.sh builds .venv from /usr/bin/python3 for that reason;
$KMM_UNPRIV_PYTHON names another one.
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
PROOF = ["UFFDIO_API*", "missing * fault served by UFFDIO_COPY*"]


def interpreter() -> str:
    py = os.environ.get("KMM_UNPRIV_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to become nobody")
    probe = subprocess.run([*NOBODY, py, "-c", "import pytest, junit_xml"], capture_output=True, text=True,
                           cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{py} is not usable by nobody ({probe.stderr.strip().splitlines()[-1:]}); "
                    "scripts/bootstrap.sh builds .venv from /usr/bin/python3")
    return py


@pytest.fixture
def shared_tmp():
    d = Path(tempfile.mkdtemp(prefix="kmm-unpriv-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unprivileged_run(shared_tmp):
    py = interpreter()
    out = shared_tmp / "r"
    p = subprocess.run([*NOBODY, py, str(ROOT / "run_suite.py"), f"--results={out}", *PROOF],
                       capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert "Traceback" not in p.stdout + p.stderr
    assert p.returncode == 0, p.stdout + p.stderr
    cases = {c["name"]: c for c in json.loads((out / "summary.json").read_text())["cases"]}
    assert cases["UFFDIO_API (with syscall)"]["verdict"] == "pass"  # UFFD_USER_MODE_ONLY is unprivileged
    dev = cases["UFFDIO_API (with /dev/userfaultfd)"]
    if os.stat("/dev/userfaultfd").st_mode & 0o006 != 0o006:
        assert dev["verdict"] == "skip" and "/dev/userfaultfd" in dev["message"]
    for name, c in cases.items():
        if "anon 4 kB" in name:
            assert c["verdict"] == "pass", c
        if "hugetlb" in name:  # pool empty: cannot grow it unprivileged; pool has pages: runs
            assert (c["verdict"] == "skip" and "needs root" in c["message"]) or c["verdict"] == "pass", c
