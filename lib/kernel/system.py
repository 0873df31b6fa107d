"""Kernel facts and journalled settings.

Facts are read from /proc and /sys (never inferred from the kernel version).  ``Settings``
changes sysfs/procfs knobs (THP and mTHP controls, khugepaged, hugetlb pools) and restores
them (docs/ARCHITECTURE.md rule 6): on normal exit, on exceptions, on SIGTERM/SIGINT through the runner, and
after a SIGKILL through a journal that the next run replays before it starts.  The journal and
the run lock live under /run, which is a tmpfs: a reboot resets both the knobs and the journal.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import json
import os
import platform
import re
import time
from dataclasses import dataclass

from lib.kernel import libc

THP = "/sys/kernel/mm/transparent_hugepage"
HUGETLB = "/sys/kernel/mm/hugepages"
STATE_DIR = os.environ.get("KMM_STATE_DIR", "/run/kmm-conformance")

PAGE_SIZE = libc.PAGE_SIZE
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def read_text(path: str, default: str | None = None) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        if default is None:
            raise
        return default


def selected(value: str) -> str:
    """The active choice of a sysfs multiple-choice file: 'always [madvise] never' -> 'madvise'."""
    m = re.search(r"\[([^\]]+)\]", value)
    return m.group(1) if m else value


def is_root() -> bool:
    return os.geteuid() == 0


def size_label(size: int) -> str:
    """cow.c's size notation: '2048 kB', '1048576 kB'."""
    return f"{size // KiB} kB"


# ---------------------------------------------------------------------------------------
# kernel facts


@functools.cache
def kernel_config() -> dict[str, str]:
    """CONFIG_* values from /proc/config.gz or /boot/config-<release>; {} when neither exists.

    An option the config lists as ``# CONFIG_X is not set`` maps to ``"n"``; an option the
    kernel's Kconfig does not have at all is absent."""
    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        text = read_text(f"/boot/config-{platform.release()}", "")
    return parse_config(text)


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_* values of a kernel .config text (``# CONFIG_X is not set`` maps to ``"n"``)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:-len(" is not set")]] = "n"
    return out


def git_output(tree: str, *args: str, timeout: float = 20) -> str:
    """``git -C tree ARGS`` standard output, stripped; "" when git fails or is missing."""
    import subprocess

    try:
        p = subprocess.run(["git", "-c", f"safe.directory={tree}", "-C", tree, *args], capture_output=True,
                           text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def config_enabled(name: str) -> bool | None:
    """True/False for a CONFIG_ option, None when the config cannot be read."""
    cfg = kernel_config()
    if not cfg:
        return None
    return cfg.get(name) in ("y", "m")


@functools.cache
def pmd_size() -> int:
    """PMD THP size in bytes, 0 when THP is not supported (vm_util.c read_pmd_pagesize)."""
    try:
        return int(read_text(f"{THP}/hpage_pmd_size"))
    except (OSError, ValueError):
        return 0


def thp_enabled_global() -> str:
    return selected(read_text(f"{THP}/enabled", "never"))


@functools.cache
def thp_sizes() -> tuple[int, ...]:
    """Anonymous THP sizes the kernel offers: the PMD size plus every per-size (mTHP) control."""
    return tuple(sorted({pmd_size(), *_per_size_controls("enabled")} - {0}))


@functools.cache
def shmem_thp_sizes() -> tuple[int, ...]:
    """Shmem THP sizes with a per-size control (hugepages-<size>kB/shmem_enabled)."""
    return tuple(sorted(_per_size_controls("shmem_enabled")))


def _per_size_controls(knob: str) -> set[int]:
    """The sizes whose /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/ holds ``knob``."""
    try:
        entries = os.listdir(THP)
    except OSError:
        return set()
    sizes = set()
    for e in entries:
        m = re.fullmatch(r"hugepages-(\d+)kB", e)
        if m and os.path.exists(f"{THP}/{e}/{knob}"):
            sizes.add(int(m.group(1)) * KiB)
    return sizes


@functools.cache
def hugetlb_sizes() -> tuple[int, ...]:
    try:
        entries = os.listdir(HUGETLB)
    except OSError:
        return ()
    sizes = [int(m.group(1)) * KiB for e in entries if (m := re.fullmatch(r"hugepages-(\d+)kB", e))]
    return tuple(sorted(sizes))


@functools.cache
def default_hugetlb_size() -> int:
    """Hugepagesize in /proc/meminfo (fixed at boot: default_hugepagesz=)."""
    m = re.search(r"Hugepagesize:\s+(\d+) kB", read_text("/proc/meminfo", ""))
    return int(m.group(1)) * KiB if m else 0


def hugetlb_path(size: int, name: str) -> str:
    return f"{HUGETLB}/hugepages-{size // KiB}kB/{name}"


def hugetlb_counter(size: int, name: str) -> int:
    return int(read_text(hugetlb_path(size, name), "0"))


def swap_active() -> bool:
    lines = read_text("/proc/swaps", "").splitlines()
    return len(lines) > 1


def debugfs_mounted() -> bool:
    return any(" debugfs " in line for line in read_text("/proc/mounts", "").splitlines())


def numa_nodes() -> list[int]:
    txt = read_text("/sys/devices/system/node/online", "0")
    nodes: list[int] = []
    for part in txt.split(","):
        if "-" in part:
            a, b = part.split("-")
            nodes.extend(range(int(a), int(b) + 1))
        elif part:
            nodes.append(int(part))
    return nodes


@dataclass(frozen=True)
class KernelFacts:
    release: str
    version: str
    cmdline: str
    machine: str
    page_size: int
    pmd_size: int
    thp_sizes: tuple[int, ...]
    hugetlb_sizes: tuple[int, ...]
    uffd_features: int
    uffd_reason: str
    thp_settings: dict[str, str]
    hugetlb_pools: dict[str, int]
    swap: bool
    root: bool

    def properties(self) -> dict[str, str]:
        """Report properties (JUnit testsuite properties, summary.json)."""
        from lib.kernel import abi

        feats = [f.name for f in abi.Feature if self.uffd_features & f]
        props = {
            "kernel.release": self.release,
            "kernel.version": self.version,
            "kernel.cmdline": self.cmdline,
            "machine": self.machine,
            "page_size": str(self.page_size),
            "thp.pmd_size": str(self.pmd_size),
            "thp.sizes": " ".join(size_label(s) for s in self.thp_sizes),
            "hugetlb.sizes": " ".join(size_label(s) for s in self.hugetlb_sizes),
            "uffd.features": f"{self.uffd_features:#x}",
            "uffd.feature_names": " ".join(feats),
            "swap": "yes" if self.swap else "no",
            "root": "yes" if self.root else "no",
        }
        if self.uffd_reason:
            props["uffd.unavailable"] = self.uffd_reason
        for k, v in self.thp_settings.items():
            props[f"thp.{k}"] = v
        for k, v in self.hugetlb_pools.items():
            props[f"hugetlb.{k}"] = str(v)
        return props


def thp_settings_snapshot() -> dict[str, str]:
    """Every THP knob (global, khugepaged, per-size), as 'relative path' -> value."""
    out: dict[str, str] = {}
    if not os.path.isdir(THP):
        return out
    for root, _dirs, files in os.walk(THP):
        if "/stats" in root:
            continue
        for f in sorted(files):
            path = os.path.join(root, f)
            rel = os.path.relpath(path, THP)
            if rel == "hpage_pmd_size" or rel.startswith(("khugepaged/full_scans", "khugepaged/pages_collapsed")):
                continue
            out[rel] = selected(read_text(path, "?"))
    return dict(sorted(out.items()))


def hugetlb_pools_snapshot() -> dict[str, int]:
    return {f"{size_label(s)}.nr_hugepages": hugetlb_counter(s, "nr_hugepages") for s in hugetlb_sizes()}


def facts() -> KernelFacts:
    from lib.kernel import uffd

    u = uffd.probe()
    un = os.uname()
    return KernelFacts(
        release=un.release,
        version=un.version,
        cmdline=read_text("/proc/cmdline", ""),
        machine=un.machine,
        page_size=PAGE_SIZE,
        pmd_size=pmd_size(),
        thp_sizes=thp_sizes(),
        hugetlb_sizes=hugetlb_sizes(),
        uffd_features=u.features,
        uffd_reason=u.reason,
        thp_settings=thp_settings_snapshot(),
        hugetlb_pools=hugetlb_pools_snapshot(),
        swap=swap_active(),
        root=is_root(),
    )


# ---------------------------------------------------------------------------------------
# settings with a journal


class SettingsError(Exception):
    """A knob could not be changed (the caller turns this into a SKIP with the reason)."""


class Settings:
    """Change sysfs/procfs values and put them back.

    ``set`` records a path's original value in memory and in the journal before its first
    write.  ``restore`` writes the originals back in reverse order and clears the journal.
    ``repair`` replays a journal left by a run that died without restoring.
    """

    def __init__(self, state_dir: str = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.journal_path = os.path.join(state_dir, "journal.json")
        self.lock_path = os.path.join(state_dir, "lock")
        self.original: dict[str, str] = {}
        self.order: list[str] = []
        self._lock_fd: int | None = None

    # -- the run lock ---------------------------------------------------------------------
    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the machine-wide run lock, waiting up to ``timeout`` seconds for its holder."""
        if self._lock_fd is not None:
            return True
        os.makedirs(self.state_dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    os.close(fd)
                    return False
                time.sleep(0.1)  # polling a lock held by another process, bounded by the timeout
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return True

    def lock_holder(self) -> str:
        return read_text(self.lock_path, "?")

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- values ---------------------------------------------------------------------------
    @staticmethod
    def read(path: str) -> str:
        return selected(read_text(path))

    def set(self, path: str, value: str | int) -> None:
        value = str(value)
        try:
            current = self.read(path)
        except OSError as e:
            raise SettingsError(f"cannot read {path}: {e.strerror}") from None
        if path not in self.original:
            self.original[path] = current
            self.order.append(path)
            self._write_journal()
        if current == value:
            return
        try:
            _write(path, value)
        except OSError as e:
            raise SettingsError(f"cannot write {value!r} to {path}: {e.strerror}") from None

    def restore(self) -> list[str]:
        """Write every original value back; returns the paths that could not be restored."""
        failed = []
        for path in reversed(self.order):
            try:
                if self.read(path) != self.original[path]:
                    _write(path, self.original[path])
                # A write can succeed and not take (a hugetlb pool cannot shrink below the pages
                # still in use or reserved): read it back.
                now = self.read(path)
                if now != self.original[path]:
                    failed.append(f"{path} (reads {now}, was {self.original[path]})")
            except OSError:
                failed.append(path)
        self.original.clear()
        self.order.clear()
        if not failed:
            self._remove_journal()
        return failed

    def repair(self) -> dict[str, str]:
        """Replay a leftover journal (a previous run was killed); returns what was restored.

        A temporary swap device the killed run had set up has its own journal (lib.kernel.swap.repair,
        which the runner calls first); lib.kernel.swap imports this module, never the other way."""
        restored: dict[str, str] = {}
        try:
            with open(self.journal_path) as f:
                entries = json.load(f)
        except (OSError, ValueError):
            return restored
        for path, value in reversed(entries):
            try:
                if self.read(path) != value:
                    _write(path, value)
                    restored[path] = value
            except OSError:
                pass
        self._remove_journal()
        return restored

    def _write_journal(self) -> None:
        if not is_root():
            return
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = self.journal_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump([[p, self.original[p]] for p in self.order], f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)

    def _remove_journal(self) -> None:
        if not is_root():
            return  # an unprivileged run changes nothing and owns no journal
        try:
            os.unlink(self.journal_path)
        except FileNotFoundError:
            pass

    # -- hugetlb pools --------------------------------------------------------------------
    def ensure_hugetlb(self, size: int, count: int) -> None:
        """Make at least ``count`` free hugetlb pages of ``size`` (hugetlb_setup in cow.c)."""
        if size not in hugetlb_sizes():
            raise SettingsError(f"hugetlb size {size_label(size)} not offered by this kernel")
        free = hugetlb_counter(size, "free_hugepages")
        if free >= count:
            return
        nr_path = hugetlb_path(size, "nr_hugepages")
        nr = hugetlb_counter(size, "nr_hugepages")
        self.set(nr_path, nr + count - free)
        free = hugetlb_counter(size, "free_hugepages")
        if free < count:
            raise SettingsError(
                f"could only get {free} of {count} free {size_label(size)} hugetlb pages"
            )


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


SETTINGS = Settings()
