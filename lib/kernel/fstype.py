"""The file system a file descriptor lives on: fstatfs(2)'s f_type.

gup_longterm.c decides from it whether a R/W longterm pin of a MAP_SHARED file mapping must
work (tmpfs, hugetlbfs), must fail (btrfs, ext4, xfs: file systems with writeback, which
cannot take longterm R/W pins: mm/gup.c check_vma_flags / vma_needs_dirty_tracking) or is
unknown (anything else: the case skips, as upstream's "Unknown filesystem").
"""

from __future__ import annotations

import ctypes
import errno
import os

from lib.kernel import abi, libc

_fstatfs = libc._fn("fstatfs", ctypes.c_int, ctypes.c_int, ctypes.POINTER(abi.statfs))

NAMES = {
    abi.TMPFS_MAGIC: "tmpfs", abi.HUGETLBFS_MAGIC: "hugetlbfs", abi.BTRFS_SUPER_MAGIC: "btrfs",
    abi.EXT4_SUPER_MAGIC: "ext4", abi.XFS_SUPER_MAGIC: "xfs",
}
# gup_longterm.c fs_supports_writable_longterm_pinning
WRITABLE_LONGTERM = frozenset((abi.TMPFS_MAGIC, abi.HUGETLBFS_MAGIC))


def fs_type(fd: int) -> int:
    """f_type of the file system ``fd`` is on (raises OSError)."""
    st = abi.statfs()
    while _fstatfs(fd, ctypes.byref(st)) != 0:
        err = ctypes.get_errno()
        if err not in (0, errno.EINTR):  # EINTR: try again, as gup_longterm.c get_fs_type does
            raise OSError(err, f"fstatfs: {os.strerror(err)}")
    return st.f_type & 0xFFFFFFFF


def name(f_type: int) -> str:
    return NAMES.get(f_type, f"unknown file system {f_type:#x}")


def known(f_type: int) -> bool:
    """gup_longterm.c !fs_is_unknown: a file system whose R/W longterm pinning it knows."""
    return f_type in NAMES


def writable_longterm(f_type: int) -> bool:
    """gup_longterm.c fs_supports_writable_longterm_pinning (only for known file systems)."""
    if not known(f_type):
        raise ValueError(f"{name(f_type)}: gup_longterm.c knows nothing about it")
    return f_type in WRITABLE_LONGTERM
