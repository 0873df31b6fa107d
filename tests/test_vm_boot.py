"""lib.runner.vm: real boots of Debian kernels under virtme-ng/QEMU, and fast checks without a VM.

The tests marked ``vm`` boot a kernel (slow: about 15-35 s per boot on TCG). Run them with
``pytest -m vm tests/test_vm_boot.py -s`` to see the measured boot times. They are skipped
with a reason when vng, QEMU or the kernel images are absent (``scripts/setup-vm.sh``
installs them) or when not running as root (the images in /boot are root-only).

The unmarked tests drive `run_in_kernel` through a fake ``vng`` (a shell script that prints
a console and runs the guest wrapper on the host), so the pexpect loop, deadlines and the
process-tree kill are checked in a second.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.runner import vm
from lib.runner.vm_console import BootStage, Verdict, parse_console

REPO = Path(__file__).resolve().parent.parent


def _image(pattern: str) -> str | None:
    found = sorted(glob.glob(f"/boot/vmlinuz-{pattern}"))
    return found[-1] if found else None


IMAGE_61 = _image("6.1.*")
IMAGE_612 = _image("6.12.*")


def _require(image: str | None) -> str:
    if vm.find_vng() is None:
        pytest.skip("virtme-ng (vng) not installed: " + vm.install_hint().splitlines()[1].strip())
    if vm.find_qemu() is None:
        pytest.skip(f"{vm.QEMU_BINARY} not installed (apt-get install qemu-system-x86)")
    if image is None:
        pytest.skip("kernel image not installed (apt-get install linux-image-amd64 linux-image-6.12-amd64)")
    if os.geteuid() != 0 or not os.access(image, os.R_OK):
        pytest.skip(f"{image} not readable: run as root")
    return image


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """Host directory mounted read-write in the guest (same path)."""
    path = tmp_path / "shared"
    path.mkdir()
    return path


def _report(record_property: pytest.RecordProperty, name: str, outcome: vm.VmOutcome) -> None:
    record_property("boot_time", outcome.boot_time)
    record_property("duration", outcome.duration)
    record_property("kvm_used", outcome.kvm_used)
    boot = "n/a" if outcome.boot_time is None else f"{outcome.boot_time:.1f} s"
    print(
        f"\n[{name}] verdict={outcome.verdict} exit={outcome.guest_exit_code} host_exit={outcome.host_exit_code}"
        f" boot={boot} total={outcome.duration:.1f} s kvm={outcome.kvm_used}"
    )


@pytest.mark.vm
def test_detect_kvm_is_bounded_and_cached() -> None:
    _require(IMAGE_61)
    first = vm.detect_kvm_usable(IMAGE_61, timeout=10)
    assert vm.detect_kvm_usable(IMAGE_61) is first  # cached
    print(f"\nKVM usable: {first}")


@pytest.mark.vm
def test_boot_61_runs_command_and_propagates_exit_code(
    shared_dir: Path, record_property: pytest.RecordProperty
) -> None:
    image = _require(IMAGE_61)
    lines: list[str] = []
    script = f"uname -r; cat /proc/version; id -u; echo hi > {shared_dir}/x; exit 3"
    outcome = vm.run_in_kernel(
        image,
        ["sh", "-c", script],
        str(shared_dir),
        vm_timeout=240,
        stall_timeout=120,
        on_line=lambda line: lines.append(line.text) if not line.kernel else None,
    )
    _report(record_property, "6.1 exit 3", outcome)
    assert outcome.verdict is Verdict.OK, outcome.reason
    assert outcome.guest_exit_code == 3
    assert outcome.host_exit_code == 3  # vng propagates it too
    assert outcome.stage is BootStage.EXITED
    assert (shared_dir / "x").read_text() == "hi\n"  # the guest (root) wrote to the rwdir
    release = os.path.basename(image).removeprefix("vmlinuz-")
    assert release in lines
    assert "0" in lines  # uid 0
    assert outcome.boot_time is not None and outcome.boot_time < 120


@pytest.mark.vm
def test_panic_is_reported_as_panic_not_hang(shared_dir: Path, record_property: pytest.RecordProperty) -> None:
    image = _require(IMAGE_61)
    outcome = vm.run_in_kernel(
        image,
        ["sh", "-c", "echo '# [RUN] crash me'; echo c > /proc/sysrq-trigger; sleep 600"],
        str(shared_dir),
        cmdline="oops=panic panic_on_warn=1",
        vm_timeout=240,
        stall_timeout=120,
    )
    _report(record_property, "6.1 panic", outcome)
    assert outcome.verdict is Verdict.PANIC, outcome.reason
    assert outcome.running_case == "crash me"
    assert outcome.guest_exit_code is None
    assert outcome.host_exit_code == 255  # vng: panic=-1 and -no-reboot end QEMU
    assert outcome.killed is None  # QEMU ended by itself, well before any deadline
    assert outcome.boot_time is not None
    assert outcome.duration - outcome.boot_time < 30
    assert any("sysrq triggered crash" in line for line in outcome.console_tail)


def _qemu_processes_mentioning(path: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and path in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.vm
def test_stall_kills_the_whole_vm(shared_dir: Path, record_property: pytest.RecordProperty) -> None:
    image = _require(IMAGE_61)
    outcome = vm.run_in_kernel(
        image,
        ["sh", "-c", "echo '# [RUN] sleepy'; sleep 600"],
        str(shared_dir),
        vm_timeout=240,
        stall_timeout=10,
    )
    _report(record_property, "6.1 stall", outcome)
    assert outcome.verdict is Verdict.STALLED, outcome.reason
    assert outcome.killed is Verdict.STALLED
    assert outcome.running_case == "sleepy"
    assert outcome.guest_exit_code is None
    assert _qemu_processes_mentioning(str(shared_dir)) == []


# Runs inside the guest with the host venv's interpreter: kernel facts as JSON.
GUEST_FACTS = r"""
import ctypes, json, os, sys, glob
out = {"python": sys.executable, "python_version": sys.version.split()[0], "uid": os.getuid(),
       "release": os.uname().release}
out["dev_userfaultfd"] = os.path.exists("/dev/userfaultfd")
def read(p):
    try:
        return open(p).read().strip()
    except OSError as e:
        return f"<{e.strerror}>"
out["unprivileged_userfaultfd"] = read("/proc/sys/vm/unprivileged_userfaultfd")
thp = "/sys/kernel/mm/transparent_hugepage"
out["thp"] = {k: read(f"{thp}/{k}") for k in ("enabled", "defrag", "shmem_enabled")}
out["mthp_sizes"] = sorted(os.path.basename(p) for p in glob.glob(f"{thp}/hugepages-*"))
out["hugetlb_sizes"] = sorted(os.path.basename(p) for p in glob.glob("/sys/kernel/mm/hugepages/hugepages-*"))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
class Api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]
def features(fd):
    api = Api(0xAA, 0, 0)
    if libc.ioctl(fd, 0xC018AA3F, ctypes.byref(api)) != 0:
        return {"error": os.strerror(ctypes.get_errno())}
    return {"features": hex(api.features), "ioctls": hex(api.ioctls)}
fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
out["uffd_syscall"] = features(fd) if fd >= 0 else {"error": os.strerror(ctypes.get_errno())}
try:
    dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    fd2 = libc.ioctl(dev, 0xAA00, os.O_CLOEXEC | os.O_NONBLOCK)
    out["uffd_dev"] = features(fd2) if fd2 >= 0 else {"error": os.strerror(ctypes.get_errno())}
except OSError as e:
    out["uffd_dev"] = {"error": e.strerror}
json.dump(out, open(os.path.join(sys.argv[1], "facts.json"), "w"), indent=1)
"""


@pytest.mark.vm
@pytest.mark.parametrize("image", [IMAGE_61, IMAGE_612], ids=["6.1", "6.12"])
def test_guest_facts(image: str | None, shared_dir: Path, record_property: pytest.RecordProperty) -> None:
    image = _require(image)
    outcome = vm.run_in_kernel(
        image,
        [sys.executable, "-c", GUEST_FACTS, str(shared_dir)],
        str(shared_dir),
        vm_timeout=240,
        stall_timeout=120,
        cwd=str(REPO),
    )
    _report(record_property, os.path.basename(image), outcome)
    assert outcome.verdict is Verdict.OK, outcome.reason
    assert outcome.guest_exit_code == 0, outcome.console_tail[-20:]
    facts = json.loads((shared_dir / "facts.json").read_text())
    print(json.dumps(facts, indent=1))
    record_property("facts", json.dumps(facts))
    assert facts["python"] == sys.executable  # the host venv interpreter runs in the guest
    assert facts["uid"] == 0
    assert facts["release"] == os.path.basename(image).removeprefix("vmlinuz-")
    assert facts["dev_userfaultfd"] is True
    assert "features" in facts["uffd_syscall"]
    assert "[" in facts["thp"]["enabled"]


# ---------------------------------------------------------------- without a VM

FAKE_VNG = """#!/bin/sh
# Stands in for vng: prints a console, runs the --exec command (the last argument) here.
for last; do :; done
echo "Probing EDD (edd=off to disable)... ok"
echo "[    0.000000] Linux version 6.99.0-fake"
echo "[    0.100000] virtme-ng-init: starting script"
eval "$last"
rc=$?
echo "[    0.200000] reboot: Power down"
exit $rc
"""


@pytest.fixture
def fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake vng on $KMM_VNG and a fake image; returns the image path."""
    vng = tmp_path / "vng"
    vng.write_text(FAKE_VNG)
    vng.chmod(0o755)
    image = tmp_path / "bzImage"
    image.write_bytes(b"not a kernel")
    monkeypatch.setenv(vm.VNG_ENV, str(vng))
    monkeypatch.setattr(vm, "find_qemu", lambda: "/bin/true")
    return str(image)


def test_fake_vm_exit_code_markers_and_lines(fake_vng: str, shared_dir: Path) -> None:
    seen: list[tuple[str, bool]] = []
    outcome = vm.run_in_kernel(
        fake_vng,
        ["sh", "-c", "echo '# [RUN] a b'; echo 'ok 1 a b'; echo '# [RUN] c'; echo data > shared/y; exit 5"],
        str(shared_dir),
        kvm=False,
        cwd=str(shared_dir.parent),
        on_line=lambda line: seen.append((line.text, line.kernel)),
    )
    assert outcome.verdict is Verdict.OK, outcome.reason
    assert (outcome.guest_exit_code, outcome.host_exit_code) == (5, 5)
    assert outcome.running_case == "c"
    assert outcome.last_case == "a b"
    assert ("ok 1 a b", False) in seen
    assert ("reboot: Power down", True) in seen
    assert (shared_dir / "y").read_text() == "data\n"  # ran in cwd
    assert not (shared_dir / vm.GUEST_SCRIPT).exists()  # wrapper script cleaned up
    assert "--disable-kvm" in outcome.command
    assert outcome.boot_time is not None and outcome.duration < 10


def test_fake_vm_stall_kills_process_tree(fake_vng: str, shared_dir: Path) -> None:
    marker = f"sleep 9{os.getpid()}{time.monotonic_ns() % 10**6}"  # a unique, long sleep
    start = time.monotonic()
    outcome = vm.run_in_kernel(
        fake_vng,
        ["sh", "-c", f"echo '# [RUN] hang'; {marker}"],
        str(shared_dir),
        kvm=False,
        stall_timeout=1.5,
    )
    assert time.monotonic() - start < 10
    assert outcome.verdict is Verdict.STALLED
    assert outcome.killed is Verdict.STALLED
    assert outcome.running_case == "hang"
    assert outcome.guest_exit_code is None and outcome.host_exit_code is None
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


def test_fake_vm_no_boot(fake_vng: str, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vng = Path(os.environ[vm.VNG_ENV])
    vng.write_text("#!/bin/sh\necho 'Probing EDD (edd=off to disable)... ok'\nexec sleep 600\n")
    outcome = vm.run_in_kernel(fake_vng, ["true"], str(shared_dir), kvm=False, boot_timeout=1.0)
    assert outcome.verdict is Verdict.NO_BOOT
    assert outcome.stage is BootStage.FIRMWARE
    assert outcome.boot_time is None


def test_guest_wrapper_reports_exit_code() -> None:
    script = vm.guest_wrapper(["sh", "-c", 'echo "$KMM_X it\'s"; exit 42'], {"KMM_X": "a b"})
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 42
    assert proc.stdout.splitlines() == ["KMM-GUEST-START", "a b it's", "KMM-EXIT=42"]
    result = parse_console(proc.stdout)
    assert (result.exit_code, result.verdict) == (42, Verdict.OK)


def test_a_clone_in_a_guest_tmpfs_is_shared_read_only() -> None:
    """virtme-ng gives the guest empty /tmp and /var/tmp: a clone there must be shared (--rwdir, writable
    as the overlay over other host directories is);
    one elsewhere, or inside the shared results folder, must not."""
    assert vm.guest_hidden("/var/tmp/kmm-fresh/fresh", "/tmp/results")
    assert vm.guest_hidden("/tmp/clone", "/work/results")
    assert not vm.guest_hidden("/work/main", "/tmp/results")
    assert not vm.guest_hidden("/tmpfoo/clone", "/x")
    assert not vm.guest_hidden("/tmp/results/sub", "/tmp/results")
    argv = vm.build_vng_command("v", "i", "s", "/s", clone_dirs=("/var/tmp/c",))
    assert argv[argv.index("/var/tmp/c") - 1] == "--rwdir"
    assert "/var/tmp/c" not in vm.build_vng_command("v", "i", "s", "/s")


def test_build_vng_command() -> None:
    argv = vm.build_vng_command(
        "/v/vng", "/boot/img", "sh /s/x.sh", "/s", memory="4G", cpus=3, cmdline=" a=1 ", kvm=False
    )
    assert argv == [
        "/v/vng", "--run", "/boot/img", "--verbose", "--force-9p", "--rwdir", "/s", "--memory", "4G",
        "--cpus", "3", "--disable-kvm", "--append", "a=1", "--exec", "sh /s/x.sh",
    ]  # fmt: skip
    assert "--disable-kvm" not in vm.build_vng_command("v", "i", "s", "/s", kvm=True)


def test_setup_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.VNG_ENV, "/nonexistent/vng")
    with pytest.raises(vm.VmSetupError, match="not a readable file"):  # the image is named first
        vm.run_in_kernel("/nonexistent", ["true"], str(tmp_path))
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    with pytest.raises(vm.VmSetupError, match="install"):
        vm.run_in_kernel(str(image), ["true"], str(tmp_path))


@pytest.mark.vm
def test_not_a_kernel_is_a_harness_problem_with_qemus_words(tmp_path: Path) -> None:
    """`--kernel /etc/passwd`: QEMU refuses it before any kernel output; the terminal gets
    QEMU's own words and --bisect the abort code (the commit is not at fault)."""
    _require(IMAGE_612)
    if os.geteuid() != 0:
        pytest.skip("--kernel needs root")
    env = dict(os.environ, KMM_STATE_DIR=str(tmp_path / "state"), KMM_VM_KVM="0")
    p = subprocess.run([sys.executable, str(REPO / "run_suite.py"), "--kernel", "/etc/passwd", "--bisect",
                        f"--results={tmp_path / 'r'}", "missing"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 255, p.stdout + p.stderr
    assert "invalid kernel header" in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_too_long_cmdline_is_refused(fake_vng: str, shared_dir: Path) -> None:
    with pytest.raises(vm.VmSetupError, match="command line"):
        vm.run_in_kernel(fake_vng, ["true"], str(shared_dir), kvm=False, cmdline="x" * 2000)


def test_kvm_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.KVM_ENV, "0")
    assert vm.detect_kvm_usable("/nonexistent") is False
    monkeypatch.setenv(vm.KVM_ENV, "1")
    assert vm.detect_kvm_usable("/nonexistent") is True


def test_kill_process_tree() -> None:
    marker = f"sleep 8{os.getpid()}{time.monotonic_ns() % 10**6}"
    proc = subprocess.Popen(
        ["sh", "-c", f"{marker} & setsid sh -c '{marker}' & wait"],
        start_new_session=True,
    )
    only_sleeps = f"^{marker}$"  # the outer sh's command line contains the marker too: match the sleeps only
    deadline = time.monotonic() + 5
    while len(subprocess.run(["pgrep", "-f", only_sleeps], capture_output=True).stdout.split()) < 2:
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.05)  # test-side polling only
    vm.kill_process_tree(proc.pid)
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout.split():
        assert time.monotonic() < deadline, "a descendant survived"
        time.sleep(0.05)
