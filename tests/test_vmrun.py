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

from lib.runner import vmrun
from lib.runner.vm import VNG_ENV

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "runner"

BOOT = """#!/bin/sh
prev=
for a; do [ "$prev" = --run ] && image=$a; prev=$a; done
[ -f "$image" ] || { echo "$image does not exist"; exit 1; }  # as vng says it, from ITS directory
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


def run(env: dict, tree: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    e = dict(env, KMM_CASES=str(DATA / tree), KMM_STATE_DIR=PRIVATE_STATE)  # never waits for a real run
    return subprocess.run([sys.executable, str(ROOT / "run_suite.py"), *args], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=120)


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


@root_only
def test_kernels_series_keeps_an_earlier_series_folders(tmp_path):
    """A second --kernels run into the same --results never deletes the first one's per-kernel
    folder: it makes one of its own beside it."""
    _, env = fake(tmp_path, RUNS)
    image = tmp_path / "vmlinuz-1-good"
    image.write_bytes(b"x")
    for _ in range(2):
        p = run(env, "passing", "--kernels", str(image), f"--results={tmp_path / 'r'}")
        assert p.returncode == 0, p.stdout + p.stderr
    first, second = tmp_path / "r" / "00-1-good", tmp_path / "r" / "00-1-good.1"
    assert (first / "summary.json").exists() and (second / "summary.json").exists()


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


# -- paths, exit-code agreement, deadlines and harness problems ---------------------------------


@root_only
def test_path_arguments_are_taken_from_the_callers_directory(tmp_path):
    """`--kernel arch/x86/boot/bzImage` from a kernel tree: every path is the caller's, though
    vng and the guest run from the suite's directory (the stand-in vng fails on a path it
    cannot see from there, as the real one does)."""
    image, env = fake(tmp_path, RUNS)
    caller = tmp_path / "caller"
    (caller / "arch").mkdir(parents=True)
    os.rename(image, caller / "arch" / "bzImage")
    p = run(env, "passing", "--kernel", "arch/bzImage", "--bisect", "--results=out", cwd=caller)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((caller / "out" / "summary.json").read_text())
    assert s["kernel"]["vm.image"] == str(caller / "arch" / "bzImage")
    p = run(env, "passing", "--kernels", "arch/bzImage", "--results=series", cwd=caller)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (caller / "series" / "table.txt").exists()
    p = run(env, "passing", "--compare", "out", "./out", cwd=caller)
    assert p.returncode == 0, p.stdout + p.stderr


@root_only
@pytest.mark.parametrize("tree,plain,bisect", [("brokenfail", 1, 1), ("cannottest", 1, 125)])
def test_host_and_kernel_paths_give_the_same_codes(tmp_path, tree, plain, bisect):
    """One function decides: a harness error beside a failure is bad on both paths; a
    'cannot test' case beside a pass is 125 on both."""
    image, env = fake(tmp_path, RUNS)
    host = [run(env, tree, f"--results={tmp_path / 'h1'}"),
            run(env, tree, "--bisect", f"--results={tmp_path / 'h2'}")]
    guest = [run(env, tree, "--kernel", image, f"--results={tmp_path / 'v1'}"),
             run(env, tree, "--kernel", image, "--bisect", f"--results={tmp_path / 'v2'}")]
    assert [p.returncode for p in host] == [plain, bisect], host[1].stdout + host[1].stderr
    assert [p.returncode for p in guest] == [plain, bisect], guest[1].stdout + guest[1].stderr
    assert "# bisect: " in host[1].stdout and "# bisect: " in guest[1].stdout


DEADLINE = BOOT + """for a; do [ "$prev" = --rwdir ] && shared=$a; prev=$a; done
cat > "$shared/summary.json" <<'JSON'
{"format": "kmm-conformance-summary/2", "kernel": {}, "partial": true, "partial_reason": "running",
 "totals": {"pass": 1, "fail": 0, "xfail": 0, "xpass": 0, "skip": 0, "error": 0}, "exit_code": null,
 "planned": [{"area": "demo", "name": "demo one", "nodeid": "a"}, {"area": "demo", "name": "demo two", "nodeid": "b"},
             {"area": "demo", "name": "demo three", "nodeid": "c"}],
 "not_run": ["demo two", "demo three"],
 "cases": [{"area": "demo", "name": "demo one", "verdict": "pass"}]}
JSON
echo "KMM-GUEST-START"
echo "ok 1 demo one"
echo "# [RUN] demo two"
exec sleep 600
"""


@root_only
def test_vm_deadline_is_cannot_test_and_unreached_cases_are_not_run(tmp_path):
    image, env = fake(tmp_path, DEADLINE)
    p = run(env, "passing", "--kernel", image, "--bisect", "--vm-timeout=4", f"--results={tmp_path / 'r'}")
    assert p.returncode == 125, p.stdout + p.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    verdicts = {c["name"]: (c["verdict"], c["message"]) for c in s["cases"]}
    assert verdicts["demo one"][0] == "pass"
    assert verdicts["demo two"][0] == "error" and verdicts["demo two"][1].startswith("cannot test: VM deadline")
    assert s["not_run"] == ["demo three"] and s["partial"] is True and s["vm"]["verdict"] == "timeout"
    assert s["exit_code"] == 1
    p = run(env, "passing", "--kernel", image, "--vm-timeout=4", f"--results={tmp_path / 'plain'}")
    assert p.returncode == 1, p.stdout + p.stderr


QEMU_REFUSES = """#!/bin/sh
echo "warning: failed to retrieve kernel version from: /etc/passwd (modules may not work)"
echo "qemu: invalid kernel header"
exit 1
"""
GUEST_ARGV_BROKEN = BOOT + """echo "KMM-GUEST-START"
echo "run_suite.py: error: unrecognized arguments: --no-such-option"
echo "KMM-EXIT=2"
exit 2
"""


@root_only
@pytest.mark.parametrize("script,needle", [(QEMU_REFUSES, "qemu: invalid kernel header"),
                                           (GUEST_ARGV_BROKEN, "unrecognized arguments: --no-such-option")],
                         ids=["qemu refuses the image", "guest command line broken"])
def test_harness_problem_aborts_bisection_with_one_line(tmp_path, script, needle):
    image, env = fake(tmp_path, script)
    p = run(env, "passing", "--kernel", image, "--bisect", f"--results={tmp_path / 'b'}")
    assert p.returncode == 255, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and needle in p.stderr, p.stderr
    p = run(env, "passing", "--kernel", image, f"--results={tmp_path / 'p'}")
    assert p.returncode == 2 and needle in p.stderr


def test_image_is_checked_before_virtme_ng(tmp_path):
    _, env = fake(tmp_path, RUNS)
    env[VNG_ENV] = str(tmp_path / "no-vng-here")
    p = run(env, "passing", "--kernel", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr == f"run_suite.py: error: kernel image not found: {tmp_path / 'nope'}\n"
    p = run(env, "passing", "--kernel", str(tmp_path))
    assert p.returncode == 2 and "not a readable file" in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.parametrize("bisect,code", [(False, 2), (True, 255)])
def test_missing_virtme_ng_is_one_complete_line(tmp_path, bisect, code):
    image, env = fake(tmp_path, RUNS)
    env[VNG_ENV] = str(tmp_path / "no-vng-here")
    p = run(env, "passing", "--kernel", image, *(["--bisect"] if bisect else []))
    assert p.returncode == code
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("(install them with: sudo scripts/setup-vm.sh .venv)\n")
    assert "not found: virtme-ng (vng)" in p.stderr


def test_bad_command_line_under_bisect_aborts(tmp_path):
    """Exit 2 would tell git bisect run "bad": a bad command line aborts instead."""
    _, env = fake(tmp_path, RUNS)
    p = run(env, "passing", "--bisect", "--bogus")
    assert p.returncode == 255 and "unrecognized arguments: --bogus" in p.stderr
    p = run(env, "passing", "--bisect", "no_such_case_anywhere", f"--results={tmp_path / 'r'}")
    assert p.returncode == 255 and p.stderr.count("\n") == 1


@root_only
def test_kernels_series_stops_at_a_harness_problem(tmp_path):
    """--kernels --find-first-bad must not treat an image QEMU refuses as good or bad."""
    image, env = fake(tmp_path, QEMU_REFUSES)
    p = run(env, "passing", "--kernels", image, image, "--find-first-bad", f"--results={tmp_path / 'r'}")
    assert p.returncode == 2 and "invalid kernel header" in p.stderr and p.stderr.count("\n") == 1, p.stderr
