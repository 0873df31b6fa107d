"""The calling process's effective capabilities (/proc/self/status CapEff, capabilities(7))."""

from __future__ import annotations

import ctypes

from lib.kernel import abi, libc

CAP_IPC_LOCK = abi.CAP_IPC_LOCK
CAP_SYS_PTRACE = abi.CAP_SYS_PTRACE


def effective() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has(cap: int) -> bool:
    return bool(effective() & (1 << cap))


def drop(*caps: int) -> None:
    """Remove ``caps`` from this process's effective, permitted and inheritable sets
    (capget(2)/capset(2), _LINUX_CAPABILITY_VERSION_3): it cannot raise them again.  For a
    forked child that must meet a kernel check as an unprivileged process would (capable()
    tests the effective set: kernel/capability.c, security/commoncap.c cap_capable())."""
    hdr = abi.cap_user_header(abi.LINUX_CAPABILITY_VERSION_3, 0)
    data = (abi.cap_user_data * abi.LINUX_CAPABILITY_U32S_3)()
    libc.syscall(abi.NR.capget, ctypes.addressof(hdr), ctypes.addressof(data))
    for cap in caps:
        word, bit = data[cap // 32], 1 << (cap % 32)
        word.effective &= ~bit
        word.permitted &= ~bit
        word.inheritable &= ~bit
    libc.syscall(abi.NR.capset, ctypes.addressof(hdr), ctypes.addressof(data))
