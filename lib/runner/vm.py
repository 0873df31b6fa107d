"""Run a command inside another kernel with virtme-ng (QEMU), watching its console.

This is the VM layer behind ``run_suite.py --kernel IMAGE``. The guest shares the host's
root filesystem (read-only, with writable overlays that are discarded at exit) and starts
in the host's current directory, so the suite runs from the same checkout; its results
come back through ``shared_dir``, a read-write 9p mount of a host directory.

The console is driven with pexpect: virtme-ng writes the kernel's serial console to its
stderr and the guest command's stdout/stderr to its stdout/stderr, so on the pty they
arrive merged, and `lib.runner.vm_console.ConsoleWatchdog` sorts them out (splats, progress,
``# [RUN]`` markers, time-outs). The guest command is wrapped so that it prints
``KMM-GUEST-START`` first and ``KMM-EXIT=<rc>`` last; that sentinel, not vng's own exit
status (which is also 255 after a panic), gives the guest exit code.

Nested KVM is often unusable on cloud VMs (the guest hangs or QEMU aborts setting MSRs), so
`detect_kvm_usable` probes it once with a short, bounded QEMU run and `run_in_kernel`
falls back to TCG (``--disable-kvm``).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pexpect

from lib.runner.vm_console import EXIT_SENTINEL, START_SENTINEL, BootStage, ConsoleLine, ConsoleWatchdog, Splat, Verdict

__all__ = [
    "VmOutcome",
    "VmSetupError",
    "build_vng_command",
    "detect_kvm_usable",
    "find_qemu",
    "find_vng",
    "guest_wrapper",
    "install_hint",
    "kill_process_tree",
    "run_in_kernel",
]

QEMU_BINARY = "qemu-system-x86_64"
#: Environment override for the KVM probe: "1" forces KVM, "0" forces TCG.
KVM_ENV = "KMM_VM_KVM"
#: Environment override for the vng executable.
VNG_ENV = "KMM_VNG"

#: Modules the guest does not need that udev would load at boot; under TCG their loading
#: (crypto self-tests of the AES/SHA/CRC accelerators, kvm, AHCI probing) takes about half
#: the boot time (measured: 6.1 guest command starts after ~34 s without, ~19 s with).
FAST_BOOT_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,iTCO_wdt,ahci,aesni_intel,ghash_clmulni_intel,polyval_clmulni,"
    "sha512_ssse3,sha256_ssse3,sha1_ssse3,crc32_pclmul,crct10dif_pclmul,powernow_k8,"
    "acpi_cpufreq,pcspkr,i2c_i801,lpc_ich,i6300esb,serio_raw"
)

#: Characters of extra kernel command line we allow: vng's own parameters take about 650
#: (more with a long shared_dir path) of x86's COMMAND_LINE_SIZE of 2048, and an overflow
#: kills the guest at boot (fortify "kernel BUG at lib/string_helpers.c").
CMDLINE_BUDGET = 1100

#: Name of the wrapper script written into shared_dir.
GUEST_SCRIPT = ".kmm-guest.sh"

_kvm_cache: dict[str, bool] = {}


class VmSetupError(RuntimeError):
    """virtme-ng, QEMU or the kernel image is missing or unusable (nothing was booted)."""


@dataclass(frozen=True)
class VmOutcome:
    """Result of `run_in_kernel`."""

    verdict: Verdict  #: see lib.runner.vm_console.Verdict
    guest_exit_code: int | None  #: exit status of the guest command, None if unknown
    console_tail: list[str]  #: last console lines (kernel and guest), as received
    running_case: str | None  #: case running at the end / at the panic (``# [RUN]``)
    duration: float  #: seconds from spawn to the end of QEMU
    kvm_used: bool
    reason: str = ""  #: one line explaining the verdict
    boot_time: float | None = None  #: seconds until the guest command started
    stage: BootStage = BootStage.NONE  #: how far the guest got
    host_exit_code: int | None = None  #: vng's own exit status (None if killed)
    last_case: str | None = None  #: last case that reported a TAP result
    splats: list[Splat] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  #: the vng argv used
    killed: Verdict | None = None  #: why the host killed the VM, None if it ended itself


# --------------------------------------------------------------------------- discovery


def find_vng() -> str | None:
    """Path of the ``vng`` executable, or None.

    Looked up in ``$KMM_VNG``, next to the running interpreter (a venv's bin/), then
    in ``$PATH``.
    """
    override = os.environ.get(VNG_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "vng")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("vng")


def find_qemu() -> str | None:
    """Path of ``qemu-system-x86_64``, or None."""
    return shutil.which(QEMU_BINARY)


def install_hint() -> str:
    """Advice to print when `find_vng`/`find_qemu` come back empty."""
    return (
        "running a kernel image needs virtme-ng and QEMU:\n"
        "  sudo scripts/setup-vm.sh .venv        # does all of the below, idempotently\n"
        "  sudo apt-get install qemu-system-x86 busybox-static\n"
        "  .venv/bin/pip install virtme-ng\n"
        "The kernel needs virtio, 9p and overlayfs (built in, or as modules installed in\n"
        "/lib/modules/<release>, as Debian's linux-image-* packages do), and for this suite\n"
        "CONFIG_USERFAULTFD and CONFIG_TRANSPARENT_HUGEPAGE; when building with vng add\n"
        "--config tools/testing/selftests/mm/config."
    )


def _default_probe_image() -> str | None:
    images = sorted(glob.glob("/boot/vmlinuz-*"))
    return images[-1] if images else None


def detect_kvm_usable(image: str | None = None, *, timeout: float = 10.0) -> bool:
    """Can QEMU boot a kernel with KVM here? Cached for the life of the process.

    A bounded probe (at most `timeout` seconds): boot `image` (default: a
    /boot/vmlinuz-*) with ``-machine accel=kvm -cpu host``, as vng would, without a root
    file system, and wait for the kernel to get far enough to look for one. Nested KVM
    that hangs or makes QEMU abort (seen here: "failed to set MSR 0x10a") gives False.
    ``$KMM_VM_KVM`` = 1 or 0 skips the probe.
    """
    override = os.environ.get(KVM_ENV)
    if override in ("0", "1"):
        return override == "1"
    key = image or ""
    if key in _kvm_cache:
        return _kvm_cache[key]
    result = _probe_kvm(image or _default_probe_image(), timeout)
    _kvm_cache[key] = result
    return result


def _probe_kvm(image: str | None, timeout: float) -> bool:
    qemu = find_qemu()
    if qemu is None or image is None or not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    args = [
        "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", image,
        "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=7 root=/dev/nonexistent",
    ]  # fmt: skip
    reached = [
        "VFS: ",
        "Kernel panic",
        "Freeing unused kernel",
        "Run /init",
        "Waiting for root device",
    ]
    try:
        child = pexpect.spawn(
            qemu, args, encoding="utf-8", codec_errors="replace", timeout=timeout,
            searchwindowsize=4096, echo=False,
        )  # fmt: skip
    except (OSError, pexpect.ExceptionPexpect):
        return False
    try:
        index = child.expect([*reached, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        return index < len(reached)
    finally:
        kill_process_tree(child.pid)
        child.close(force=True)


# --------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    tree = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group and every descendant (found via /proc).

    The pexpect child (vng) is a session and group leader, so the group kill reaches
    qemu; the /proc walk also catches anything that moved to another group.
    """
    victims = [pid, *_descendants(pid)]
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------- commands


def guest_wrapper(guest_argv: Sequence[str], guest_env: Mapping[str, str] | None = None) -> str:
    """The /bin/sh script run in the guest around `guest_argv`.

    It prints START_SENTINEL, runs the command with stdin from /dev/null and unbuffered
    Python output, syncs the shared directory, and prints ``KMM-EXIT=<rc>``.
    """
    env = {"PYTHONUNBUFFERED": "1", **(guest_env or {})}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (
        f"echo {START_SENTINEL}; export {exports}; "
        f"{shlex.join(guest_argv)} </dev/null; rc=$?; sync; "
        f'echo "{EXIT_SENTINEL}$rc"; exit $rc'
    )


def build_vng_command(
    vng: str,
    image: str,
    script: str,
    shared_dir: str,
    *,
    memory: str = "2G",
    cpus: int = 2,
    cmdline: str = "",
    kvm: bool = False,
    clone_dirs: tuple[str, ...] = (),
) -> list[str]:
    """The vng argv: verbose console, 9p root, one read-write shared directory, and the
    directories ``clone_dirs`` the guest would not see otherwise (guest_hidden()), shared
    read-write like the overlay a guest gets over every other host directory (a case writes
    beside its area, e.g. gup_longterm's local tmpfile)."""
    argv = [vng, "--run", image, "--verbose", "--force-9p", "--rwdir", shared_dir,
            "--memory", memory, "--cpus", str(cpus)]  # fmt: skip
    for d in clone_dirs:
        argv += ["--rwdir", d]
    if not kvm:
        argv.append("--disable-kvm")
    if cmdline.strip():
        argv += ["--append", cmdline.strip()]
    argv += ["--exec", script]
    return argv


# Directories a virtme-ng guest gets empty (tmpfs) although its root is the host's: a clone or
# a venv below them is invisible in the guest unless shared explicitly (seen with a clone in
# /var/tmp: "virtme-ng-init: error changing directory", then ".venv/bin/python: not found").
GUEST_TMPFS = ("/tmp", "/var/tmp")


def guest_hidden(path: str, shared_dir: str) -> bool:
    """Whether ``path`` lies below a directory the guest gets empty, and outside ``shared_dir``."""
    p = os.path.realpath(path)

    def below(d: str) -> bool:
        return p == d or p.startswith(d.rstrip("/") + "/")

    return any(below(d) for d in GUEST_TMPFS) and not below(os.path.realpath(shared_dir))


def _check_setup(image: str, shared_dir: str) -> str:
    # The image first: a mistyped path is the likelier problem, and the one to name.
    if not os.path.isfile(image) or not os.access(image, os.R_OK):
        raise VmSetupError(f"kernel image {image!r} is not a readable file")
    vng = find_vng()
    if vng is None or find_qemu() is None:
        missing = "virtme-ng (vng)" if vng is None else QEMU_BINARY
        raise VmSetupError(f"{missing} not found\n{install_hint()}")
    if not os.path.isabs(shared_dir) or not os.path.isdir(shared_dir):
        raise VmSetupError(f"shared_dir {shared_dir!r} must be an existing absolute directory")
    if any(c in shared_dir for c in "=, "):
        raise VmSetupError(f"shared_dir {shared_dir!r} must not contain '=', ',' or spaces")
    return vng


# --------------------------------------------------------------------------- running


def run_in_kernel(
    image: str,
    guest_argv: list[str],
    shared_dir: str,
    *,
    memory: str = "2G",
    cpus: int = 2,
    cmdline: str = "",
    vm_timeout: float = 900,
    stall_timeout: float = 300,
    on_line: Callable[[ConsoleLine], None] | None = None,
    boot_timeout: float = 180,
    kvm: bool | None = None,
    console_log: str | None = None,
    cwd: str | None = None,
    guest_env: Mapping[str, str] | None = None,
    fast_boot: bool = True,
) -> VmOutcome:
    """Boot `image` under virtme-ng, run `guest_argv` in it as root, and watch the console.

    Args:
        image: kernel image (vmlinuz/bzImage); modules, if any, from /lib/modules/<rel>.
        guest_argv: command run in the guest, from `cwd` (the root fs is shared). Use
            absolute interpreter paths (e.g. sys.executable): the guest's $PATH is
            virtme's, not the host user's.
        shared_dir: existing absolute host directory, mounted read-write at the same path;
            the guest wrapper script is written there as GUEST_SCRIPT.
        memory, cpus: guest size (vng --memory / --cpus).
        cmdline: extra kernel command line (vng --append); vng already adds ``panic=-1``.
        vm_timeout: overall deadline (seconds), boot included.
        stall_timeout: deadline for silence on the console once the guest command runs.
        on_line: called with each logical console line (kernel or guest) as it completes.
        boot_timeout: deadline for the guest command to start.
        kvm: force KVM on/off; None probes with `detect_kvm_usable`.
        console_log: if given, the raw console is written (appended) to this file.
        cwd: host/guest working directory (default: the current one).
        guest_env: extra environment variables for the guest command.
        fast_boot: keep udev from loading modules the guest does not need
            (``modprobe.blacklist=`` FAST_BOOT_BLACKLIST).

    Returns:
        VmOutcome. The VM is always gone when this returns (the whole process tree is
        killed on any deadline).

    Raises:
        VmSetupError: vng/QEMU/image/shared_dir missing (nothing was started).
    """
    vng = _check_setup(image, shared_dir)
    use_kvm = detect_kvm_usable(image) if kvm is None else kvm
    if fast_boot:
        cmdline = f"modprobe.blacklist={FAST_BOOT_BLACKLIST} {cmdline}"
    if len(cmdline) > CMDLINE_BUDGET:
        raise VmSetupError(
            f"extra kernel command line is {len(cmdline)} characters; vng's own parameters"
            f" leave about {CMDLINE_BUDGET} of the kernel's 2048 (try fast_boot=False)"
        )
    # The script travels in a file on the shared directory, not in vng's --exec: vng passes
    # --exec base64-encoded on the kernel command line, which overflows COMMAND_LINE_SIZE
    # (2048 on x86) for a long command; the guest then dies with "kernel BUG at
    # lib/string_helpers.c" (fortify) before init.
    script_path = os.path.join(shared_dir, GUEST_SCRIPT)
    with open(script_path, "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\n" + guest_wrapper(guest_argv, guest_env) + "\n")
    script = f"sh {shlex.quote(script_path)}"
    workdir = cwd or os.getcwd()
    argv = build_vng_command(vng, image, script, shared_dir, memory=memory, cpus=cpus, cmdline=cmdline, kvm=use_kvm,
                             clone_dirs=(workdir,) if guest_hidden(workdir, shared_dir) else ())
    env = dict(os.environ)
    # vng runs "virtme-run" through the shell: its directory must be on $PATH.
    env["PATH"] = os.path.dirname(os.path.abspath(vng)) + os.pathsep + env.get("PATH", "")

    start = time.monotonic()
    watchdog = ConsoleWatchdog(
        start=start, boot_timeout=boot_timeout, stall_timeout=stall_timeout,
        vm_timeout=vm_timeout,
    )  # fmt: skip
    log = open(console_log, "a", encoding="utf-8") if console_log else None  # noqa: SIM115
    child = pexpect.spawn(
        argv[0], argv[1:], cwd=workdir, env=env, encoding="utf-8",
        codec_errors="replace", timeout=None, maxread=8192, searchwindowsize=8192,
        echo=False, dimensions=(50, 250),
    )  # fmt: skip
    child.logfile_read = log
    boot_time: float | None = None
    killed: Verdict | None = None
    host_exit: int | None = None
    try:
        while True:
            now = time.monotonic()
            killed = watchdog.check(now)
            if killed is not None:
                break
            # Wake at least every few seconds so deadlines are checked even on silence.
            wait = max(0.05, min(watchdog.next_deadline(now), 5.0))
            index = child.expect([pexpect.EOF, pexpect.TIMEOUT, "\n"], timeout=wait)
            now = time.monotonic()
            if index == 1:
                continue
            text = child.before + (child.after if index == 2 else "")
            for line in watchdog.feed(text, now):
                if on_line is not None:
                    on_line(line)
            if boot_time is None and watchdog.stage >= BootStage.GUEST:
                boot_time = now - start
            if index == 0:
                break
    finally:
        end = time.monotonic()
        if killed is not None or child.isalive():
            kill_process_tree(child.pid)
        child.close(force=True)
        if killed is None:
            host_exit = child.exitstatus if child.signalstatus is None else None
        if log is not None:
            log.close()
        try:
            os.unlink(script_path)
        except OSError:
            pass

    for line in watchdog.flush(end):
        if on_line is not None:
            on_line(line)
    result = watchdog.finish(end, killed=killed)
    if boot_time is None and result.stage >= BootStage.GUEST:
        boot_time = end - start
    verdict, reason, exit_code = result.verdict, result.reason, result.exit_code
    if (
        exit_code is None
        and killed is None
        and host_exit is not None
        and host_exit != 255
        and result.stage >= BootStage.GUEST
        and verdict is Verdict.STALLED
    ):
        # The exit sentinel got lost but vng reported the command's status itself.
        exit_code = host_exit
        verdict, reason = Verdict.OK, f"guest command exited {host_exit} (from vng)"
    return VmOutcome(
        verdict=verdict,
        guest_exit_code=exit_code,
        console_tail=result.tail,
        running_case=result.running_case,
        duration=end - start,
        kvm_used=use_kvm,
        reason=reason,
        boot_time=boot_time,
        stage=result.stage,
        host_exit_code=host_exit,
        last_case=result.last_case,
        splats=result.splats,
        command=argv,
        killed=killed,
    )
