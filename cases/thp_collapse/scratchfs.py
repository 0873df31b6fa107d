"""The filesystem the file contexts use: one the suite makes, mounts and removes itself.

Whether a filesystem's page cache holds large folios and maps them by PMD is the filesystem's
business, not the collapse's: on a virtme-ng guest's 9p/overlayfs root a collapsed file shows
folio order 9 but no FilePmdMapped.  Upstream's run_vmtests.sh runs ``khugepaged all:file`` on
a loop-mounted XFS image it makes on the fly; the suite does the same: an XFS image, or an
ext4 one where mkfs.xfs is missing or the kernel cannot mount XFS, sparse, in a fresh
temporary directory, mounted through a loop device (``mount -o loop``, which detaches the
device on unmount).  It is
unmounted and deleted when the test module ends; a mount left by a killed run (its pid in the
directory name is gone) is removed by the next one.  When no image can be made or mounted the
file cases skip naming the filesystem and the error (a probe of the environment, not of the
collapse).  ``KMM_FILE_DIR`` overrides all of this with a directory of the user's choice.

The ``scratch_fs``/``file_fs`` fixtures (imported into the test modules with file variants)
mount it in the pytest process before a file case; :func:`file_dir` says where file-backed
areas live.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

from cases.thp_collapse import probes
from lib.kernel import system

PREFIX = "kmm-collapse-fs-"
IMAGE_MIB = 320  # mkfs.xfs refuses filesystems below 300 MiB; the image is sparse
# (fstype, mkfs program, arguments before the image path)
MKFS = (("xfs", "mkfs.xfs", ["-q", "-f"]), ("ext4", "mkfs.ext4", ["-q", "-F"]))


class Unavailable(Exception):
    """No scratch filesystem can be made here (the message names what was tried and why)."""


def choose(which=shutil.which) -> list[tuple[str, str, list[str]]]:
    """The filesystems to try, in order: XFS (as upstream), then ext4; those whose mkfs exists."""
    out = [(fstype, path, args) for fstype, prog, args in MKFS if (path := which(prog))]
    if not out:
        raise Unavailable("no scratch filesystem for the file contexts: neither mkfs.xfs (xfsprogs) nor mkfs.ext4 "
                          "(e2fsprogs) is installed")
    return out


def _run(argv: list[str], timeout: float = 120.0) -> str:
    """Run a command; returns '' on success, else a one-line description of the failure."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]}: {e}"
    if p.returncode:
        err = (p.stderr or p.stdout).strip().splitlines()
        return f"{' '.join(argv[:2])}... exited {p.returncode}: {err[-1] if err else ''}"
    return ""


def _mounted(path: str) -> bool:
    real = os.path.realpath(path)
    return any(line.split()[1] == real for line in system.read_text("/proc/mounts", "").splitlines()
               if len(line.split()) > 1)


def _remove(top: str) -> None:
    """Unmount and delete one scratch directory (``top/mnt`` mount point, ``top/image``)."""
    mnt = os.path.join(top, "mnt")
    if _mounted(mnt) and _run(["umount", mnt]):
        _run(["umount", "-l", mnt])  # busy: detach now, the kernel frees it when the last user goes
    with contextlib.suppress(OSError):
        os.rmdir(mnt)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(top, "image"))
    with contextlib.suppress(OSError):
        os.rmdir(top)


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove scratch directories left by runs that died (their pid no longer exists)."""
    parent = parent or tempfile.gettempdir()
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if not name.startswith(PREFIX):
                continue
            pid = name[len(PREFIX):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                _remove(os.path.join(parent, name))
                out.append(name)
    return out


class ScratchFs:
    """A loop-mounted filesystem made on first use (in the pytest process) and removed by close()."""

    def __init__(self) -> None:
        self.top = ""
        self.dir = ""
        self.fstype = ""
        self.error = ""

    def ensure(self) -> str:
        """The mounted directory; raises Unavailable (remembered) when it cannot be made."""
        if self.dir:
            return self.dir
        if self.error:
            raise Unavailable(self.error)
        try:
            self._make()
        except Unavailable as e:
            self.error = str(e)
            self.close()
            raise
        return self.dir

    def _make(self) -> None:
        if not system.is_root():
            raise Unavailable("needs root to mount a scratch filesystem for the file contexts")
        candidates = choose()
        remove_stale()
        self.top = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        image, mnt = os.path.join(self.top, "image"), os.path.join(self.top, "mnt")
        os.mkdir(mnt)
        if not os.path.exists("/dev/loop-control") and shutil.which("modprobe"):
            _run(["modprobe", "-q", "loop"])  # a guest without udev: load the driver (no error if built in)
        errors = []
        for fstype, mkfs, args in candidates:  # the next one where the kernel lacks this one
            if not kernel_has(fstype):
                errors.append(f"the kernel has no {fstype} (not in /proc/filesystems, no module)")
                continue
            with open(image, "wb") as f:
                f.truncate(IMAGE_MIB * system.MiB)
            err = _run([mkfs, *args, image]) or _run(["mount", "-t", fstype, "-o", "loop,nosuid,nodev", image, mnt])
            if not err:
                self.fstype = fstype
                break
            errors.append(f"{fstype}: {err}")
        else:
            raise Unavailable(f"cannot make a scratch filesystem for the file contexts: {'; '.join(errors)}")
        self.dir = mnt
        no_readahead(mnt)

    def close(self) -> None:
        if self.top:
            _remove(self.top)
        self.top = self.dir = ""


def no_readahead(mnt: str) -> None:
    """read_ahead_kb = 0 on the loop device behind ``mnt`` (khugepaged.c does this for the block
    device of its file directory): faults then read base pages into the page cache.  The loop
    device goes away with the mount, so nothing is restored."""
    real = os.path.realpath(mnt)
    for line in system.read_text("/proc/mounts", "").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1] == real and parts[0].startswith("/dev/loop"):
            with contextlib.suppress(OSError), open(f"/sys/block/{os.path.basename(parts[0])}/queue/read_ahead_kb",
                                                   "w") as f:
                f.write("0")


def kernel_has(fstype: str) -> bool:
    """Whether the kernel can mount ``fstype`` (/proc/filesystems, after trying its module)."""

    def listed() -> bool:
        return any(line.split()[-1] == fstype for line in system.read_text("/proc/filesystems", "").splitlines()
                   if line.split())

    if not listed() and shutil.which("modprobe"):
        _run(["modprobe", "-q", fstype])
    return listed()


# ---------------------------------------------------------------------------------------
# where file-backed areas live (the fixtures run in the pytest process, before the case forks)


_file_dir = ""  # the scratch filesystem's mount point, set by the file_fs fixture before the case forks


def file_dir() -> str:
    """Where file-backed areas live: $KMM_FILE_DIR, else the scratch filesystem (file_fs)."""
    d = os.environ.get("KMM_FILE_DIR") or _file_dir
    if not d:
        raise RuntimeError("a file case ran without the file_fs fixture (import it into the test module)")
    return d


@pytest.fixture(scope="module")
def scratch_fs():
    """One scratch filesystem per test module, made only when a file case is going to run."""
    fs = ScratchFs()
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture(autouse=True)
def file_fs(request, scratch_fs):
    """Before a file case the kernel claims to run (probes.file_collapse), in the pytest process:
    mount the scratch filesystem (skip naming it when it cannot be made)."""
    global _file_dir
    cs = getattr(request.node, "callspec", None)
    mem = getattr(cs.params.get("v") if cs else None, "mem", None)
    if mem in (probes.FILE, probes.FILE_RW) and not os.environ.get("KMM_FILE_DIR") and system.is_root() and \
            probes.file_collapse(mem, system.kernel_config())[0]:
        try:
            _file_dir = scratch_fs.ensure()
        except Unavailable as e:
            pytest.skip(str(e))
    yield


def fs_type(path: str) -> str:
    """'xfs (/tmp/kmm-collapse-fs-1-x/mnt)': the filesystem type of the mount holding ``path``."""
    best, fstype = "", "?"
    real = os.path.realpath(path)
    for line in system.read_text("/proc/mounts", "").splitlines():
        parts = line.split()
        if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) and \
                len(parts[1]) >= len(best):
            best, fstype = parts[1], parts[2]
    return f"{fstype} ({path})"
