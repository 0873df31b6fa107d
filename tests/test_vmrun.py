"""run_suite.py --kernel/--kernels/--bisect end to end with a stand-in for vng.

The stand-in prints a kernel console and runs the guest command on this machine (or prints a
panic, or never boots), so every exit-code path of the VM modes is exercised in seconds.
Real boots of Debian's kernels are in tests/test_vm_boot.py (marked vm).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lib import vmrun
from lib.vm import VNG_ENV

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "runner"

BOOT = """#!/bin/sh
for last; do :; done
echo "Probing EDD (edd=off to disable)... ok"
echo "[    0.000000] Linux version 6.99.0-fake"
echo "[    0.100000] virtme-ng-init: starting script"
"""
RUNS = BOOT + 'eval "$last"\nrc=$?\necho "[    0.200000] reboot: Power down"\nexit $rc\n'
PANICS = BOOT + """echo "KMM-GUEST-START"
echo "# [RUN] demo pass"
echo "[    1.000000] sysrq: Trigger a crash"
echo "[    1.000100] Kernel panic - not syncing: sysrq triggered crash"
echo "[    1.000200] CPU: 0 PID: 1 Comm: sh"
exit 255
"""
NO_BOOT = "#!/bin/sh\necho 'Probing EDD (edd=off to disable)... ok'\nexec sleep 600\n"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="--kernel needs root")


def fake(tmp_path: Path, script: str) -> tuple[str, dict]:
    vng = tmp_path / "vng"
    vng.write_text(script)
    vng.chmod(0o755)
    image = tmp_path / "vmlinuz-6.99.0-fake"
    image.write_bytes(b"not a kernel")
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\nexit 0\n")
    qemu.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", KMM_VM_KVM="0")
    env[VNG_ENV] = str(vng)
    return str(image), env


PRIVATE_STATE = tempfile.mkdtemp(prefix="kmm-test-state-")


def run(env: dict, tree: str, *args: str) -> subprocess.CompletedProcess:
    e = dict(env, KMM_CASES=str(DATA / tree), KMM_STATE_DIR=PRIVATE_STATE)  # never waits for a real run
    return subprocess.run([sys.executable, str(ROOT / "run_suite.py"), *args], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=120)


@root_only
@pytest.mark.parametrize("tree,plain,bisect", [("passing", 0, 0), ("mixed", 1, 1), ("allskip", 4, 125)])
def test_kernel_run_exit_codes(tmp_path, tree, plain, bisect):
    image, env = fake(tmp_path, RUNS)
    p = run(env, tree, "--kernel", image, f"--results={tmp_path / 'plain'}")
    assert p.returncode == plain, p.stdout + p.stderr
    assert "TAP version 13" in p.stdout  # live progress from the guest
    s = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert s["vm"]["verdict"] == "ok" and s["kernel"]["vm.image"] == image
    assert (tmp_path / "plain" / "junit.xml").exists() and (tmp_path / "plain" / "console.log").exists()
    p = run(env, tree, "--kernel", image, "--bisect", f"--results={tmp_path / 'bisect'}")
    assert p.returncode == bisect


@root_only
def test_panic_during_a_case_is_bad_and_names_the_case(tmp_path):
    image, env = fake(tmp_path, PANICS)
    p = run(env, "passing", "--kernel", image, "--bisect", f"--results={tmp_path}")
    assert p.returncode == 1, p.stdout + p.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    case = next(c for c in s["cases"] if c["name"] == "demo pass")
    assert case["verdict"] == "fail" and "panic" in case["message"]
    assert "Kernel panic" in case["kmsg"]
    assert s["partial"] is True
    assert "Traceback" not in p.stdout + p.stderr


@root_only
def test_no_boot_cannot_test(tmp_path):
    image, env = fake(tmp_path, NO_BOOT)
    p = run(env, "passing", "--kernel", image, "--bisect", "--vm-timeout=3", f"--results={tmp_path}")
    assert p.returncode == 125, p.stdout + p.stderr


def test_missing_image_is_a_usage_error(tmp_path):
    _, env = fake(tmp_path, RUNS)
    p = run(env, "passing", "--kernel", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not found" in p.stderr


@root_only
def test_kernels_table_and_first_bad(tmp_path):
    """Three 'kernels': the stand-in decides good or bad from the image name."""
    script = BOOT + 'case "$*" in *bad*) export KMM_CASES=' + str(DATA / "mixed") + ';; esac\n' \
        'eval "$last"\nrc=$?\nexit $rc\n'
    _, env = fake(tmp_path, script)
    images = []
    for name in ("vmlinuz-1-good", "vmlinuz-2-good", "vmlinuz-3-bad", "vmlinuz-4-bad"):
        p = tmp_path / name
        p.write_bytes(b"x")
        images.append(str(p))
    p = run(env, "passing", "--kernels", *images, "--find-first-bad", f"--results={tmp_path / 'r'}")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"# first bad: {images[2]}" in p.stdout
    assert "case" in p.stdout and "demo pass" in p.stdout
    assert (tmp_path / "r" / "table.txt").exists()


@pytest.mark.parametrize("verdicts,want", [
    ([0, 0, 1, 1], 2), ([1, 1, 1], 0), ([0, 0, 0], None), ([0, 125, 1, 1], 2), ([0, 125, 125, 1], 3),
    ([0, 1, 125, 1], 1), ([125, 125], None),
])
def test_find_first_bad(verdicts, want):
    calls = []

    def test(i):
        calls.append(i)
        return verdicts[i]

    got, _ = vmrun.find_first_bad(len(verdicts), test)
    assert got == want
    assert len(set(calls)) <= len(verdicts)
