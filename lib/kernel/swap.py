"""A temporary swap device for one run (the swapped-out variants of the COW matrix).

Where no swap is active, a run can set up a zram device as swap (zram0 if it is unused,
else one added through /sys/class/zram-control/hot_add), use it, and remove it at the end.
docs/ARCHITECTURE.md rule 6: the device is journalled (``<state dir>/swap.json``) *before* it is touched,
so a run killed with SIGKILL leaves a journal that the next run replays
(:func:`repair`, called from ``Settings.repair``): swapoff, zram reset, hot_remove.

The swap header is written by mkswap(8) where it exists, else by :func:`write_header`
(the v1 "SWAPSPACE2" layout of include/linux/swap.h).  swapon(2)/swapoff(2) are raw
syscalls.  Everything here runs in the pytest process (root only), never in a case body.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass

from lib.kernel import abi, libc, system

ZRAM_CONTROL = "/sys/class/zram-control"
DEFAULT_SIZE = 256 * system.MiB
SWAP_MAGIC = b"SWAPSPACE2"


class SwapError(Exception):
    """The temporary swap device could not be set up (the message is the skip reason)."""


def journal_path(state_dir: str | None = None) -> str:
    return os.path.join(state_dir or system.STATE_DIR, "swap.json")


@dataclass
class TempSwap:
    device: str  # /dev/zramN
    sysfs: str  # /sys/block/zramN
    hot_added: int | None = None  # zram id we added (hot_remove it at the end)
    size: int = 0

    def describe(self) -> str:
        return f"{self.device} ({self.size // system.MiB} MiB zram)"


# ---------------------------------------------------------------------------------------
# system calls and the header


def swapon(path: str, flags: int = 0) -> None:
    libc.syscall(abi.NR.swapon, ctypes.c_char_p(path.encode()), flags)


def swapoff(path: str) -> None:
    libc.syscall(abi.NR.swapoff, ctypes.c_char_p(path.encode()))


def header(size: int, page_size: int = system.PAGE_SIZE) -> bytes:
    """The first page of a v1 swap area of ``size`` bytes (what mkswap writes, minus the UUID).

    Layout (include/linux/swap.h, union swap_header): bootbits[1024], then version=1,
    last_page, nr_badpages=0, uuid[16], volume_name[16], padding; "SWAPSPACE2" in the last
    10 bytes of the page.
    """
    last_page = size // page_size - 1
    if last_page < 10:
        raise ValueError(f"swap area of {size} bytes is too small")
    page = bytearray(page_size)
    struct.pack_into("<III", page, 1024, 1, last_page, 0)
    page[page_size - len(SWAP_MAGIC) :] = SWAP_MAGIC
    return bytes(page)


def write_header(device: str, size: int) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, header(size), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_swap(device: str, size: int) -> str:
    """Write a swap header; returns how ("mkswap" or "python")."""
    mkswap = shutil.which("mkswap") or next(
        (p for p in ("/usr/sbin/mkswap", "/sbin/mkswap") if os.access(p, os.X_OK)), None)
    if mkswap:
        r = subprocess.run([mkswap, device], capture_output=True, text=True, timeout=30, check=False)
        if r.returncode == 0:
            return "mkswap"
    write_header(device, size)
    return "python"


# ---------------------------------------------------------------------------------------
# zram


def active_swaps() -> list[str]:
    return [line.split()[0] for line in system.read_text("/proc/swaps", "").splitlines()[1:] if line.strip()]


def _zram_free(sysfs: str) -> bool:
    return system.read_text(f"{sysfs}/initstate", "1") == "0" and system.read_text(f"{sysfs}/disksize", "1") == "0"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _journal(t: TempSwap | None, state_dir: str | None = None) -> None:
    path = journal_path(state_dir)
    if t is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(t), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create(size: int = DEFAULT_SIZE) -> TempSwap:
    """Set up a zram swap device; raises SwapError with the reason when it cannot."""
    if not system.is_root():
        raise SwapError("needs root to set up a temporary swap device")
    if system.config_enabled("CONFIG_SWAP") is False:
        raise SwapError("kernel built without CONFIG_SWAP")
    t: TempSwap | None = None
    if os.path.isdir("/sys/block/zram0") and _zram_free("/sys/block/zram0") and os.path.exists("/dev/zram0"):
        t = TempSwap("/dev/zram0", "/sys/block/zram0", None, size)
    elif os.path.exists(f"{ZRAM_CONTROL}/hot_add"):
        try:
            n = int(system.read_text(f"{ZRAM_CONTROL}/hot_add"))
        except (OSError, ValueError) as e:
            raise SwapError(f"zram hot_add failed: {e}") from None
        t = TempSwap(f"/dev/zram{n}", f"/sys/block/zram{n}", n, size)
    else:
        raise SwapError("no unused zram device (zram0 busy or missing, no zram-control/hot_add)")
    _journal(t)  # before the first change: a SIGKILL from here on is repaired by the next run
    try:
        _write(f"{t.sysfs}/disksize", str(size))
        make_swap(t.device, size)
        swapon(t.device, 0)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        remove(t)
        raise SwapError(f"could not set up {t.device} as swap: {e}") from None
    return t


def remove(t: TempSwap, state_dir: str | None = None) -> list[str]:
    """Undo :func:`create`; returns the steps that failed (empty on success)."""
    failed = []
    if t.device in active_swaps():
        try:
            swapoff(t.device)
        except OSError as e:
            failed.append(f"swapoff {t.device}: {e.strerror}")
    if not failed:
        try:
            if not _zram_free(t.sysfs):
                _write(f"{t.sysfs}/reset", "1")
        except OSError as e:
            failed.append(f"reset {t.sysfs}: {e.strerror}")
    if not failed and t.hot_added is not None and os.path.isdir(t.sysfs):
        try:
            _write(f"{ZRAM_CONTROL}/hot_remove", str(t.hot_added))
        except OSError as e:
            failed.append(f"hot_remove zram{t.hot_added}: {e.strerror}")
    if not failed:
        _journal(None, state_dir)
    return failed


def repair(state_dir: str | None = None) -> dict[str, str]:
    """Remove a temporary swap device left by a killed run (from the journal)."""
    try:
        with open(journal_path(state_dir)) as f:
            t = TempSwap(**json.load(f))
    except (OSError, ValueError, TypeError):
        return {}
    failed = remove(t, state_dir)
    return {f"swap {t.device}": "failed: " + "; ".join(failed) if failed else "removed"}
