"""Longterm GUP pins through the gup_test debugfs file (mm/gup_test.c, CONFIG_GUP_TEST).

cow.c and gup_longterm.c open /sys/kernel/debug/gup_test once and skip their pin tests
("gup_test not available") when they cannot.  :func:`probe` runs once per run in the pytest
process: where debugfs is not mounted it mounts it to look and, when there is no gup_test
file, unmounts it again at once; when there is one, debugfs stays mounted until
:meth:`GupTest.close`.  :class:`Pin` is the PIN_LONGTERM_TEST_START/READ/STOP sequence
(mm/gup_test.h) for a case body, R/O or R/W (PIN_LONGTERM_TEST_FLAG_USE_WRITE), GUP or
GUP-fast (PIN_LONGTERM_TEST_FLAG_USE_FAST).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from lib.kernel import abi, libc, system

DEBUGFS = "/sys/kernel/debug"
GUP_TEST = f"{DEBUGFS}/gup_test"


@dataclass
class GupTest:
    path: str | None  # the gup_test file, None when unavailable
    reason: str = ""  # why it is unavailable (a skip reason)
    mounted_by_us: bool = False

    def close(self) -> None:
        if self.mounted_by_us:
            umount(DEBUGFS)
            self.mounted_by_us = False


def mount_debugfs() -> None:
    libc.syscall(abi.NR.mount, ctypes.c_char_p(b"debugfs"), ctypes.c_char_p(DEBUGFS.encode()),
                 ctypes.c_char_p(b"debugfs"), 0, None)


def umount(path: str) -> None:
    libc.syscall(abi.NR.umount2, ctypes.c_char_p(path.encode()), 0)


def _missing_reason() -> str:
    why = {False: " (kernel built without CONFIG_GUP_TEST)", True: " (CONFIG_GUP_TEST=y but no file?)"}
    return f"gup_test not available: {GUP_TEST} missing" + why.get(system.config_enabled("CONFIG_GUP_TEST"), "")


def probe() -> GupTest:
    """Find gup_test, mounting debugfs to look where needed (root only)."""
    if os.path.exists(GUP_TEST):
        return GupTest(GUP_TEST)
    if system.debugfs_mounted():
        return GupTest(None, _missing_reason())
    if not system.is_root():
        return GupTest(None, "gup_test not available: debugfs is not mounted and mounting it needs root")
    try:
        mount_debugfs()
    except OSError as e:
        return GupTest(None, f"gup_test not available: cannot mount debugfs on {DEBUGFS}: {e.strerror}")
    if os.path.exists(GUP_TEST):
        return GupTest(GUP_TEST, mounted_by_us=True)
    reason = _missing_reason()
    try:
        umount(DEBUGFS)
    except OSError as e:
        reason += f"; could not unmount the debugfs mounted to look: {e.strerror}"
    return GupTest(None, reason)


class Pin:
    """A longterm pin of [addr, addr+size) held by the gup_test driver."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.pinned = False

    def start(self, addr: int, size: int, fast: bool, write: bool = False) -> None:
        """PIN_LONGTERM_TEST_START; raises OSError (EFAULT: the range cannot be pinned
        longterm; EINVAL: the driver refuses the request)."""
        flags = (abi.PIN_LONGTERM_TEST_FLAG_USE_FAST if fast else 0) | \
            (abi.PIN_LONGTERM_TEST_FLAG_USE_WRITE if write else 0)
        arg = abi.pin_longterm_test(addr=addr, size=size, flags=flags)
        libc.ioctl(self.fd, abi.PIN_LONGTERM_TEST_START, arg, name="PIN_LONGTERM_TEST_START")
        self.pinned = True

    def read(self, size: int) -> bytes:
        """PIN_LONGTERM_TEST_READ: the pinned pages' current content."""
        buf = ctypes.create_string_buffer(size)
        ptr = ctypes.c_uint64(ctypes.addressof(buf))
        libc.ioctl(self.fd, abi.PIN_LONGTERM_TEST_READ, ctypes.addressof(ptr), name="PIN_LONGTERM_TEST_READ")
        return buf.raw

    def stop(self) -> None:
        if self.pinned:
            libc.ioctl(self.fd, abi.PIN_LONGTERM_TEST_STOP, 0, name="PIN_LONGTERM_TEST_STOP")
            self.pinned = False

    def close(self) -> None:
        try:
            self.stop()
        finally:
            os.close(self.fd)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
