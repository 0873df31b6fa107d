"""Preconditions of cases: each unmet one is a SKIP with a precise reason (docs/ARCHITECTURE.md rule 4).

Features are found by probing a throw-away userfaultfd (lib.kernel.uffd.probe), never by kernel
version.  These helpers call pytest.skip and so are for case bodies and fixtures only.
"""

from __future__ import annotations

import os

import pytest

from lib.kernel import abi, system, uffd


def uffd_features(features: int = 0, user_mode_only: bool | None = None) -> uffd.Availability:
    """Skip unless a userfaultfd can be opened here and offers every bit of ``features``.

    ``user_mode_only`` is how the case opens it (lib.kernel.uffd.open_for): None (default) any way
    this process may, True with UFFD_USER_MODE_ONLY, False without it (prefer
    :func:`kernel_faults`, which says why).  A bit the kernel offers but refuses this process
    (EVENT_FORK without CAP_SYS_PTRACE) skips with that reason.
    """
    a = uffd.probe()
    if user_mode_only is None:
        usable = a.any
    elif user_mode_only:
        usable = a.syscall_user_only or a.dev
    else:
        usable = a.kernel_faults
    if not usable:
        pytest.skip(f"userfaultfd unavailable (possible lack of privilege): {a.reason}")
    missing = a.missing(features)
    if missing:
        pytest.skip("uffd feature missing: " + ", ".join(missing))
    refused = a.refusals(features)
    if refused:
        pytest.skip("uffd feature refused to this process: " + "; ".join(refused))
    return a


def kernel_faults(why: str) -> None:
    """Skip unless this process may open a userfaultfd that handles kernel-mode faults.

    For a case whose behaviour needs a fault taken in kernel mode on registered memory (the
    kernel's copy_to_user/copy_from_user in read(2)/write(2)/vmsplice, GUP of any kind): on a
    UFFD_USER_MODE_ONLY uffd, the only kind an unprivileged process gets under
    vm.unprivileged_userfaultfd=0, such a fault is not reported and the syscall fails with
    EFAULT.  ``why`` names the kernel-mode access.
    """
    a = uffd.probe()
    if not a.kernel_faults:
        pytest.skip(f"needs kernel-mode uffd faults ({why}); this process may open only "
                    f"UFFD_USER_MODE_ONLY userfaultfds: userfaultfd(2): {a.why('syscall')}; "
                    f"/dev/userfaultfd: {a.why('dev')}")


def open_path(via: str, user_mode_only: bool = False) -> None:
    a = uffd.probe()
    if via == "dev" and not a.dev:
        pytest.skip(f"/dev/userfaultfd not usable: {a.why('dev')}")
    key = "syscall_user_only" if user_mode_only else "syscall"
    if via == "syscall" and not getattr(a, key):
        pytest.skip(f"userfaultfd(2) not usable: {a.why(key)}")


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
