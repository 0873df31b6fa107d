"""Preconditions of cases: each unmet one is a SKIP with a precise reason (DESIGN rule 4).

Features are found by probing a throw-away userfaultfd (lib.uffd.probe), never by kernel
version.  These helpers call pytest.skip and so are for case bodies and fixtures only.
"""

from __future__ import annotations

import os

import pytest

from lib import abi, system, uffd


def uffd_features(features: int = 0, user_mode_only: bool = False) -> uffd.Availability:
    """Skip unless a userfaultfd can be opened here and offers every bit of ``features``."""
    a = uffd.probe()
    if user_mode_only:
        usable = a.syscall_user_only or a.dev
    else:
        usable = a.syscall or a.dev
    if not usable:
        pytest.skip(f"userfaultfd unavailable (possible lack of privilege): {a.reason}")
    missing = a.missing(features)
    if missing:
        pytest.skip("uffd feature missing: " + ", ".join(missing))
    return a


def _why(a: uffd.Availability, key: str) -> str:
    for part in a.reason.split("; "):
        if part.startswith(key + ":"):
            return part.split(":", 1)[1].strip()
    return a.reason or "unknown"


def open_path(via: str, user_mode_only: bool = False) -> None:
    a = uffd.probe()
    if via == "dev" and not a.dev:
        pytest.skip(f"/dev/userfaultfd not usable: {_why(a, 'dev')}")
    key = "syscall_user_only" if user_mode_only else "syscall"
    if via == "syscall" and not getattr(a, key):
        pytest.skip(f"userfaultfd(2) not usable: {_why(a, key)}")


def root(why: str) -> None:
    if not system.is_root():
        pytest.skip(f"needs root: {why}")


def thp(size: int | None = None) -> None:
    if not system.pmd_size():
        pytest.skip("THP not supported (no hpage_pmd_size)")
    if size is not None and size not in system.thp_sizes():
        pytest.skip(f"THP size {system.size_label(size)} not offered by this kernel")


def hugetlb_size(size: int) -> None:
    if size not in system.hugetlb_sizes():
        pytest.skip(f"hugetlb size {system.size_label(size)} not offered by this kernel")


def memfd_hugetlb(size: int) -> None:
    try:
        fd = os.memfd_create("kmm-probe", os.MFD_CLOEXEC | abi.MFD_HUGETLB | abi.huge_size_flag(size))
    except OSError as e:
        pytest.skip(f"memfd MFD_HUGETLB {system.size_label(size)}: {e.strerror}")
    os.close(fd)
